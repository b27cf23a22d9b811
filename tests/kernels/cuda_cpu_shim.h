// CPU stand-in for the small part of CUDA C++ that kernels/cuda/*.cu use, so that tests/kernels/
// test_cuda_emulated.py can compile the real kernel sources with g++ and run them on the CPU.
//
// Execution model: a launch runs every (block, thread) of the grid one after another on one CPU thread,
// with blockIdx / threadIdx / blockDim / gridDim set before each call. That is exact for kernels in which
// threads never communicate (one thread per output pixel, as here). Shared memory, __syncthreads, warp
// intrinsics and atomics are deliberately NOT provided: a kernel that starts using them fails to compile
// here, loudly, instead of being emulated with the wrong semantics.
#pragma once

#include <cmath>
#include <cstddef>
#include <math.h>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#ifndef __GNUC__
#define __restrict__ __restrict  // g++ and clang++ understand __restrict__ natively
#endif

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

thread_local uint3 blockIdx = {0, 0, 0};
thread_local uint3 threadIdx = {0, 0, 0};
thread_local dim3 blockDim = {1, 1, 1};
thread_local dim3 gridDim = {1, 1, 1};

// CUDA device math that <math.h> lacks. The kernels use only functions that <math.h> has (floorf, fabsf,
// fminf, fmaxf, sqrtf, ceilf, log2f, atan2f, fmodf, cosf); these few fast-math spellings are kept so that a
// kernel reaching for one still compiles, with the IEEE result. (glibc already declares __expf, __logf, ...)
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
static inline float __fdividef(float a, float b) { return a / b; }

namespace emu {

// Call kernel(args...) with each argument read from kernelParams[i], which points at its value: the same
// convention as cuLaunchKernel (and so as CuPy's RawKernel), so a wrapper passing a value of the wrong
// size reads garbage here as it would on a GPU (the Python side also checks sizes before launching).
template <typename... Args, std::size_t... I>
inline void call(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<typename std::remove_reference<Args>::type*>(params[I])...);
}

template <typename... Args>
inline void launch(void (*kernel)(Args...), const unsigned* grid, const unsigned* block, void** params) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) {
                blockIdx = {bx, by, bz};
                for (unsigned tz = 0; tz < block[2]; ++tz)
                    for (unsigned ty = 0; ty < block[1]; ++ty)
                        for (unsigned tx = 0; tx < block[0]; ++tx) {
                            threadIdx = {tx, ty, tz};
                            call(kernel, params, std::index_sequence_for<Args...>{});
                        }
            }
}

// sizeof of each kernel parameter, written to out; returns the parameter count.
template <typename... Args>
inline int param_sizes(void (*)(Args...), long* out) {
    const long sizes[] = {0L, static_cast<long>(sizeof(Args))...};
    for (std::size_t i = 0; i < sizeof...(Args); ++i) out[i] = sizes[i + 1];
    return static_cast<int>(sizeof...(Args));
}

}  // namespace emu
