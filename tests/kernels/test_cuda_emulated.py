"""The CUDA paths on the CPU: the real ``kernels/cuda/*.cu`` sources and the real launch wrappers
(``scatter._scatter_cuda``, ``layers._layers_cuda``, ``_backend.load_kernel`` / ``as_cupy``), compared with the
torch reference to 1e-4 (the same bound as the GPU tests in test_backend.py).

No GPU exists in CI, so without this the kernels would never run. How it works:

* ``cuda_cpu_shim.h`` turns CUDA's qualifiers into nothing and ``blockIdx`` / ``threadIdx`` / ``blockDim`` /
  ``gridDim`` into thread-local structs; each ``.cu`` file is ``#include``d verbatim after it, together with a
  generated launcher per ``extern "C" __global__`` kernel that runs every (block, thread) of the grid in turn
  (exact for these kernels: one thread per pixel, no communication between threads). g++ builds it once per
  session into a temporary directory; ctypes loads it.
* A fake ``cupy`` module (installed in ``sys.modules`` only for the tests here) supplies what the wrappers use:
  ``RawKernel``, whose call checks every argument against the kernel's C signature (array dtype, scalar type
  and size, no aliasing with a ``__restrict__`` output, launch bounds, launched on torch's current stream)
  and then runs the compiled launcher; ``from_dlpack`` (so the real ``as_cupy`` runs), ``cuda.Device`` and
  ``cuda.ExternalStream``. ``torch.cuda.current_stream`` / ``current_device`` and each renderer module's
  ``resolve_impl`` are patched so that ``impl="cuda"`` takes the CuPy path for CPU float32 tensors.

``test_kernels_stay_inside_their_buffers`` reruns the comparisons in a child process with the kernels built
under AddressSanitizer: a read or write outside a tensor (an illegal address or silent garbage on a GPU) fails.

What it cannot see: GPU-only behaviour (races between threads, device float intrinsics differing from glibc's
by an ulp or two, FMA contraction by nvcc). The real-GPU tests stay in test_backend.py (``-m gpu``).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import _backend, render_layers, render_scatter
from kernels import layers as layers_mod
from kernels import scatter as scatter_mod

_HERE = Path(__file__).resolve().parent
_SHIM = _HERE / "cuda_cpu_shim.h"
_CUDA_DIR = Path(_backend.__file__).resolve().with_name("cuda")
_CU_FILES = ("scatter.cu", "layers.cu")
_TOL = 1e-4
_STREAM_PTR = 0x5EED  # the fake torch stream handle; every launch must happen on it
# Set (by test_kernels_stay_inside_their_buffers, for its child pytest) to build with AddressSanitizer.
_SANITIZE_ENV = "BOKEHDIFF_CUDA_EMU_SANITIZE"

_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
# C parameter type -> (kind, numpy dtype, ctypes type for scalars). `long` is 8 bytes on the LP64 host and
# device alike (the C++ side reports sizeof of each parameter, checked against these before every launch).
_PARAM_TYPES = {
    "float*": ("array", np.float32, None),
    "int*": ("array", np.int32, None),
    "double*": ("array", np.float64, None),
    "float": ("scalar", np.float32, ctypes.c_float),
    "double": ("scalar", np.float64, ctypes.c_double),
    "int": ("scalar", np.int32, ctypes.c_int32),
    "long": ("scalar", np.int64, ctypes.c_int64),
}
_TORCH_TO_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32,
                   torch.int64: np.int64}


def _parse_params(params: str) -> list[tuple]:
    """``'const float* __restrict__ x, int n'`` -> [(name, c_type, is_const, kind, dtype, ctype), ...]."""
    out = []
    for raw in params.split(","):
        text = " ".join(raw.replace("__restrict__", " ").replace("*", " * ").split())
        *type_tokens, name = text.split(" ")
        const = "const" in type_tokens
        c_type = " ".join(t for t in type_tokens if t not in ("const", "*")) + "*" * type_tokens.count("*")
        if c_type not in _PARAM_TYPES:
            raise AssertionError(f"cuda emulation: kernel parameter {raw.strip()!r} has type {c_type!r}, which "
                                 f"the fake RawKernel does not know; add it to _PARAM_TYPES")
        out.append((name, c_type, const) + _PARAM_TYPES[c_type])
    return out


class _Compiled:
    """One .cu file built for the CPU: its source text, ctypes library and kernel signatures."""

    def __init__(self, source: str, lib: ctypes.CDLL, signatures: dict):
        self.source, self.lib, self.signatures = source, lib, signatures


@pytest.fixture(scope="session")
def compiled_kernels(tmp_path_factory) -> dict[str, _Compiled]:
    """Compile every kernels/cuda/*.cu with the shim (once per session). Fails, never skips, without g++:
    a test that silently never runs is what this file exists to prevent."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.fail("g++ is not on PATH: tests/kernels/test_cuda_emulated.py compiles kernels/cuda/*.cu for the "
                    "CPU with it. Install a C++ compiler (Debian/Ubuntu: apt-get install g++).", pytrace=False)
    build = tmp_path_factory.mktemp("cuda_emulated")
    out = {}
    for file_name in _CU_FILES:
        cu = _CUDA_DIR / file_name
        source = cu.read_text()
        signatures = {name: _parse_params(params) for name, params in _KERNEL_RE.findall(source)}
        assert signatures, f"no extern \"C\" __global__ kernel found in {cu}"
        lines = [f'#include "{_SHIM}"', f'#include "{cu}"']
        for name in signatures:
            lines.append(f'extern "C" void emu_launch_{name}(const unsigned* g, const unsigned* b, void** p) '
                         f"{{ emu::launch(&{name}, g, b, p); }}")
            lines.append(f'extern "C" int emu_sizes_{name}(long* out) {{ return emu::param_sizes(&{name}, out); }}')
        unit = build / f"{cu.stem}_emu.cpp"
        unit.write_text("\n".join(lines) + "\n")
        lib_path = build / f"{cu.stem}_emu.so"
        # -std=c++14 as in load_kernel's NVRTC options; -ffp-contract=off: no FMA contraction on the host.
        cmd = [gxx, "-std=c++14", "-O2", "-ffp-contract=off", "-Wall", "-shared", "-fPIC", "-x", "c++",
               str(unit), "-o", str(lib_path)]
        if os.environ.get(_SANITIZE_ENV):
            cmd[2:3] = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"compiling {cu} for the CPU failed ({' '.join(cmd)}):\n{proc.stderr}", pytrace=False)
        lib = ctypes.CDLL(str(lib_path))
        for name, sig in signatures.items():
            sizes = (ctypes.c_long * 64)()
            count = getattr(lib, f"emu_sizes_{name}")(sizes)
            assert count == len(sig), f"{file_name}:{name}: parsed {len(sig)} parameters, C++ sees {count}"
            for (pname, c_type, _, kind, _, ctype), size in zip(sig, sizes[:count]):
                expect = ctypes.sizeof(ctypes.c_void_p) if kind == "array" else ctypes.sizeof(ctype)
                assert size == expect, f"{file_name}:{name}({pname}): sizeof({c_type}) is {size}, packed as {expect}"
            getattr(lib, f"emu_launch_{name}").restype = None
        out[file_name] = _Compiled(source, lib, signatures)
    return out


class _FakeArray:
    """What ``cupy.from_dlpack`` returns here: the CPU tensor (kept alive) and its data pointer."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.ptr = tensor.data_ptr()
        self.nbytes = tensor.numel() * tensor.element_size()
        self.dtype = _TORCH_TO_NUMPY.get(tensor.dtype)


def _make_fake_cupy(compiled: dict[str, _Compiled], launches: list) -> types.ModuleType:
    cupy = types.ModuleType("cupy")
    cupy.__doc__ = "CPU stand-in for CuPy (tests/kernels/test_cuda_emulated.py)"
    cupy.int32, cupy.int64, cupy.float32, cupy.float64 = np.int32, np.int64, np.float32, np.float64
    state = {"device": None, "stream": None}

    def from_dlpack(obj):
        if not isinstance(obj, torch.Tensor):
            raise TypeError(f"fake cupy.from_dlpack expects a torch.Tensor; got {type(obj).__name__}")
        return _FakeArray(obj)

    class Device:
        def __init__(self, device=None):
            if not isinstance(device, int):
                raise TypeError(f"cupy.cuda.Device takes an int device index; got {device!r}")
            self.id = device

        def __enter__(self):
            self._prev, state["device"] = state["device"], self.id
            return self

        def __exit__(self, *exc):
            state["device"] = self._prev

    class ExternalStream:
        def __init__(self, ptr):
            self.ptr = ptr

        def __enter__(self):
            self._prev, state["stream"] = state["stream"], self.ptr
            return self

        def __exit__(self, *exc):
            state["stream"] = self._prev

    class RawKernel:
        def __init__(self, code, name, options=(), **kwargs):
            matches = [c for c in compiled.values() if c.source == code]
            if not matches:
                raise AssertionError("RawKernel source is not one of the compiled kernels/cuda/*.cu files")
            self.compiled, self.name, self.options = matches[0], name, tuple(options)
            if name not in self.compiled.signatures:
                raise AssertionError(f"RawKernel: no extern \"C\" __global__ {name} in the source")
            self.signature = self.compiled.signatures[name]

        def __call__(self, grid, block, args, **kwargs):
            grid3, block3 = self._dims("grid", grid), self._dims("block", block)
            if int(np.prod(block3)) > 1024:
                raise ValueError(f"{self.name}: {block3} is more than 1024 threads per block")
            if state["stream"] != _STREAM_PTR or state["device"] is None:
                raise AssertionError(f"{self.name} launched outside `with cupy.cuda.Device(...), "
                                     f"ExternalStream(torch's current stream)` (device {state['device']}, "
                                     f"stream {state['stream']})")
            if len(args) != len(self.signature):
                raise TypeError(f"{self.name} takes {len(self.signature)} arguments; got {len(args)}")
            values, arrays = [], []
            for (pname, c_type, const, kind, dtype, ctype), arg in zip(self.signature, args):
                where = f"{self.name}({c_type} {pname})"
                if kind == "array":
                    if not isinstance(arg, _FakeArray):
                        raise TypeError(f"{where}: expected a device array; got {type(arg).__name__}")
                    if arg.dtype is not dtype:
                        raise TypeError(f"{where}: array of {arg.tensor.dtype}, kernel reads {dtype.__name__}")
                    arrays.append((where, const, arg))
                    values.append(ctypes.c_void_p(arg.ptr))
                else:
                    # Python int/float would be packed by CuPy as 64-bit; the kernel's width must match exactly.
                    if type(arg) is not dtype:
                        raise TypeError(f"{where}: expected cupy.{dtype.__name__}; got {type(arg).__name__}")
                    values.append(ctype(arg.item()))
            for i, (wa, ca, a) in enumerate(arrays):  # __restrict__: an output may not alias any other array
                for wb, cb, b in arrays[i + 1:]:
                    if not (ca and cb) and a.ptr < b.ptr + b.nbytes and b.ptr < a.ptr + a.nbytes:
                        raise AssertionError(f"{wa} and {wb} overlap; one is written through __restrict__")
            params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
            launch = getattr(self.compiled.lib, f"emu_launch_{self.name}")
            launch((ctypes.c_uint * 3)(*grid3), (ctypes.c_uint * 3)(*block3), params)
            launches.append((self.name, grid3, block3))

        def _dims(self, what, dims):
            dims = (dims,) if isinstance(dims, int) else tuple(dims)
            if not 1 <= len(dims) <= 3 or not all(isinstance(d, int) and d >= 1 for d in dims):
                raise ValueError(f"{self.name}: {what} must be 1 to 3 positive ints (CUDA rejects 0); got {dims}")
            return dims + (1,) * (3 - len(dims))

    cuda = types.ModuleType("cupy.cuda")
    cuda.Device, cuda.ExternalStream = Device, ExternalStream
    cupy.cuda = cuda
    cupy.from_dlpack = from_dlpack
    cupy.RawKernel = RawKernel
    return cupy


@pytest.fixture
def cuda_emulation(monkeypatch, compiled_kernels):
    """Route ``impl="cuda"`` through the real wrappers and compiled kernels on the CPU. Yields the launch log
    (kernel name, grid, block) so that tests can assert the kernels really ran."""
    launches: list = []
    monkeypatch.setitem(sys.modules, "cupy", _make_fake_cupy(compiled_kernels, launches))
    monkeypatch.setitem(sys.modules, "cupy.cuda", sys.modules["cupy"].cuda)

    def current_stream(device=None):
        assert device is None or torch.device(device).type == "cpu", f"stream asked for {device}"
        return types.SimpleNamespace(cuda_stream=_STREAM_PTR)

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    real_resolve = _backend.resolve_impl

    def resolve_impl(impl, tensor, op):
        return "cuda" if impl == "cuda" else real_resolve(impl, tensor, op)

    monkeypatch.setattr(scatter_mod, "resolve_impl", resolve_impl)
    monkeypatch.setattr(layers_mod, "resolve_impl", resolve_impl)
    # load_kernel and the CuPy probe cache what they saw; neither may keep the fake beyond this test.
    _backend.load_kernel.cache_clear()
    _backend._cupy_status.cache_clear()
    yield launches
    _backend.load_kernel.cache_clear()
    _backend._cupy_status.cache_clear()


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------- scatter renderer


def _random_scene(b=2, h=36, w=44, scale=4.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(b, 3, h, w, generator=gen)
    coc = torch.randn(b, 1, h, w, generator=gen) * scale
    return img, coc


@pytest.mark.parametrize("blades, rotation", [(0, 0.0), (6, 15.0), (5, -40.0)])
def test_scatter_cuda_matches_torch_on_random_scenes(cuda_emulation, blades, rotation):
    img, coc = _random_scene()
    opts = dict(blades=blades, rotation_deg=rotation, max_coc_px=7.0)
    ref = render_scatter(img, coc, impl="torch", **opts)
    out = render_scatter(img, coc, impl="cuda", **opts)
    assert [name for name, _, _ in cuda_emulation] == ["scatter_norm", "scatter_gather"]
    assert _max_err(out, ref) < _TOL
    assert _max_err(out, img) > 0.05  # the scene really is blurred, so agreement is not trivial


def test_scatter_cuda_matches_torch_with_highlight_boost(cuda_emulation):
    img, coc = _random_scene(seed=1)
    img = img * 2.0  # HDR: well above the threshold in places
    opts = dict(blades=6, rotation_deg=10.0, highlight_threshold=0.9, highlight_gain=3.0)
    ref = render_scatter(img, coc, impl="torch", **opts)
    out = render_scatter(img, coc, impl="cuda", **opts)
    plain = render_scatter(img, coc, impl="cuda", blades=6, rotation_deg=10.0)
    assert _max_err(out, ref) < _TOL
    assert (out - plain).max().item() > 0.1  # the boost changed the image


def _occlusion_scene(fg_coc: float, bg_coc: float, h=32, w=40):
    """Left half foreground (CoC fg_coc), right half background (bg_coc), a bright vertical bar in the
    background next to the edge; both halves textured."""
    gen = torch.Generator().manual_seed(3)
    img = torch.rand(1, 3, h, w, generator=gen) * 0.3
    img[..., w // 2 + 2: w // 2 + 5] = 1.5
    coc = torch.full((1, 1, h, w), bg_coc)
    coc[..., : w // 2] = fg_coc
    return img, coc


@pytest.mark.parametrize("fg_coc, bg_coc", [(0.0, -6.0), (5.0, -3.0), (6.0, 0.0), (2.0, 1.8)],
                         ids=["sharp-fg-over-blurred-bg", "blurred-fg-over-blurred-bg", "blurred-fg-over-sharp-bg",
                              "within-margin"])
def test_scatter_cuda_matches_torch_at_occlusion_edges(cuda_emulation, fg_coc, bg_coc):
    img, coc = _occlusion_scene(fg_coc, bg_coc)
    ref = render_scatter(img, coc, impl="torch")
    out = render_scatter(img, coc, impl="cuda")
    assert _max_err(out, ref) < _TOL
    if fg_coc == 0.0:
        # The sharp foreground receives no background light at all: bit-exact identity there, on both paths.
        fg = slice(None, img.shape[-1] // 2)
        assert torch.equal(out[..., fg], img[..., fg])


def test_scatter_cuda_exact_identity_in_focus_and_float64_inputs(cuda_emulation):
    img, coc = _random_scene(b=1, h=20, w=24, seed=4)
    # All in focus (|coc| < 0.5): both paths return the input bit for bit.
    small = coc.clamp(-0.45, 0.45)
    assert torch.equal(render_scatter(img, small, impl="cuda"), img)
    assert torch.equal(render_scatter(img, torch.zeros_like(coc), impl="cuda"), img)
    # float64 in: the CUDA path computes in float32 and returns float64, still within 1e-4 of the reference.
    img64, coc64 = img.double(), coc.double()
    ref = render_scatter(img64, coc64, impl="torch")
    out = render_scatter(img64, coc64, impl="cuda")
    assert out.dtype == torch.float64
    assert _max_err(out, ref) < _TOL
    # Non-contiguous inputs (a strided view) go through the wrapper's .contiguous() copies.
    wide = torch.rand(1, 3, 20, 48)
    view, coc_view = wide[..., ::2], torch.randn(1, 1, 20, 48)[..., 1::2] * 3.0
    assert _max_err(render_scatter(view, coc_view, impl="cuda"), render_scatter(view, coc_view, impl="torch")) < _TOL


# -------------------------------------------------------------------------------------- layered ray tracer


def _layer_scene(b=2, h=29, w=37, seed=5):
    gen = torch.Generator().manual_seed(seed)
    imgs = torch.rand(b, 3, 3, h, w, generator=gen)
    alphas = torch.rand(b, 3, 1, h, w, generator=gen)
    alphas[:, 0, :, :, : w // 3] = 0.0  # holes in the near layer reveal the ones behind
    alphas[:, 1] = (alphas[:, 1] > 0.4).float() * 0.8
    alphas[:, 2] = alphas[:, 2] * 0.5 + 0.5  # partially transparent far layer: weight < 1
    # disparity = (1 - A x - B y) / C: tilted near, middle and far planes.
    planes = torch.tensor([[[0.004, -0.003, 1.2], [-0.002, 0.005, 2.0], [0.001, 0.001, 5.0]],
                           [[0.0, 0.006, 1.3], [0.003, 0.0, 2.5], [-0.001, 0.002, 6.0]]])[:b]
    return imgs, alphas, planes


@pytest.mark.parametrize("blades", [0, 5])
def test_layers_cuda_matches_torch_on_tilted_layers(cuda_emulation, blades):
    imgs, alphas, planes = _layer_scene()
    k = torch.tensor([12.0, 20.0])
    opts = dict(n_samples=24, blades=blades, rotation_deg=20.0, seed=3)
    ref = render_layers(imgs, alphas, planes, k, 0.45, impl="torch", **opts)
    out = render_layers(imgs, alphas, planes, k, 0.45, impl="cuda", **opts)
    assert [name for name, _, _ in cuda_emulation] == ["layers_trace"]
    for a, b in zip(out, ref):
        assert _max_err(a, b) < _TOL
    colour, weight = out
    # Partial alpha everywhere, so no pixel is fully covered; rays leaving the grid near the border lower it more.
    assert weight.max().item() < 1.0 and weight.mean().item() > 0.5
    sharp = render_layers(imgs, alphas, planes, 0.0, 0.45, impl="cuda")[0]
    assert _max_err(colour, sharp) > 0.05  # defocus changed the image


def test_layers_cuda_matches_torch_without_prefilter_and_auto_samples(cuda_emulation):
    imgs, alphas, planes = _layer_scene(b=1, h=24, w=31, seed=6)
    for opts in (dict(prefilter=False, n_samples=16), dict(max_samples=20)):
        ref = render_layers(imgs, alphas, planes, 15.0, 0.6, impl="torch", **opts)
        out = render_layers(imgs, alphas, planes, 15.0, 0.6, impl="cuda", **opts)
        for a, b in zip(out, ref):
            assert _max_err(a, b) < _TOL


def test_layers_cuda_with_k_zero_is_the_composite(cuda_emulation):
    imgs, alphas, planes = _layer_scene(seed=7)
    ref = render_layers(imgs, alphas, planes, 0.0, 0.5, impl="torch")
    out = render_layers(imgs, alphas, planes, 0.0, 0.5, impl="cuda")
    for a, b in zip(out, ref):
        assert _max_err(a, b) < _TOL
    # "over" composite, near to far, premultiplied.
    trans = torch.ones_like(alphas[:, 0])
    composite = torch.zeros_like(imgs[:, 0])
    for l in range(imgs.shape[1]):
        composite += trans * (imgs[:, l] * alphas[:, l])
        trans = trans * (1 - alphas[:, l])
    assert _max_err(out[0], composite) < 1e-6
    assert _max_err(out[1], 1 - trans) < 1e-6
    # Many aperture samples with K = 0 still see the same composite (every ray lands on its own pixel).
    many = render_layers(imgs, alphas, planes, 0.0, 0.5, n_samples=8, impl="cuda")
    assert _max_err(many[0], composite) < 1e-5


# ------------------------------------------------------------------------------------ the emulator itself


def test_fake_rawkernel_rejects_a_scalar_of_the_wrong_width(cuda_emulation):
    """The argument checks are what make a wrapper bug visible on the CPU: e.g. passing int32 where the kernel
    declares `long` (on a GPU: garbage read, no error)."""
    import cupy

    kern = _backend.load_kernel("layers.cu", "layers_trace", 0)
    dummy = torch.zeros(4)
    arrays = [cupy.from_dlpack(torch.zeros(4)) for _ in range(2)]
    bad = (arrays[0], cupy.from_dlpack(torch.zeros(4, dtype=torch.int32)), cupy.int32(4),  # `long total`
           *[cupy.from_dlpack(dummy)] * 5, *[cupy.int32(1)] * 6, cupy.float32(0.0), *arrays)
    with cupy.cuda.Device(0), cupy.cuda.ExternalStream(_STREAM_PTR):
        with pytest.raises(TypeError, match=r"layers_trace\(long total\): expected cupy.int64; got int32"):
            kern((1,), (1,), bad)
    assert cuda_emulation == []


def test_scatter_cuda_on_an_empty_image_returns_it_like_torch(cuda_emulation):
    """B * H * W = 0: the torch path returns the empty image; CUDA rejects a launch with a zero grid
    (invalid configuration), so the wrapper must not launch at all."""
    for shape in ((1, 3, 0, 5), (0, 3, 4, 5)):
        img = torch.rand(shape)
        coc = torch.zeros(shape[0], 1, *shape[2:])
        out = render_scatter(img, coc, impl="cuda")
        assert out.shape == img.shape and torch.equal(out, render_scatter(img, coc, impl="torch"))
    assert cuda_emulation == []


@pytest.mark.slow
def test_kernels_stay_inside_their_buffers(tmp_path):
    """The scatter and layer comparisons again, in a child pytest with the kernels built with
    -fsanitize=address (libasan preloaded into that Python): any out-of-bounds access fails the test."""
    libasan = subprocess.run([shutil.which("g++") or "g++", "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.fail(f"libasan.so not found next to g++ (got {libasan!r}); install it with g++ "
                    "(Debian/Ubuntu: apt-get install g++, which pulls in libasan)", pytrace=False)
    log = tmp_path / "asan"
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS=f"detect_leaks=0:log_path={log}",
               **{_SANITIZE_ENV: "1"})
    subset = "not buffers and (random_scenes or occlusion or tilted or k_zero or empty)"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", subset],
                          cwd=_HERE.parents[1], env=env, capture_output=True, text=True, timeout=300)
    reports = "".join(p.read_text(errors="replace") for p in tmp_path.glob("asan*"))
    assert not reports, f"AddressSanitizer report from the kernels:\n{reports[:4000]}"
    assert proc.returncode == 0, f"sanitized run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    assert re.search(r"\b1[0-9] passed\b", proc.stdout), f"expected 10+ sanitized tests to run:\n{proc.stdout[-2000:]}"


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_scatter_cuda_orients_odd_polygons_by_the_sign_of_coc(cuda_emulation, sign):
    """A bright point with a pentagon at coc = +-12: CUDA and torch both splat the point-reflected aperture in
    front of focus (coc > 0) and the upright one behind it (kernels/aperture.py)."""
    img = torch.zeros(1, 3, 33, 33)
    img[..., 16, 16] = 5.0
    coc = torch.full((1, 1, 33, 33), 12.0 * sign)
    ref = render_scatter(img, coc, blades=5, rotation_deg=20.0, impl="torch")
    out = render_scatter(img, coc, blades=5, rotation_deg=20.0, impl="cuda")
    assert [name for name, _, _ in cuda_emulation] == ["scatter_norm", "scatter_gather"]
    assert _max_err(out, ref) < _TOL
    other = render_scatter(img, -coc, blades=5, rotation_deg=20.0, impl="cuda")
    assert _max_err(out, other.flip(-1, -2)) < _TOL  # the opposite sign is the point reflection ...
    assert _max_err(out, other) > 0.01  # ... which is a different shape for a pentagon


def test_layers_cuda_on_an_empty_image_returns_it_like_torch(cuda_emulation):
    """B * H * W = 0: no zero-size grid is launched, neither through render_layers nor by the wrapper itself."""
    for b, h, w in ((1, 0, 5), (0, 4, 5), (2, 3, 0)):
        imgs, alphas = torch.rand(b, 2, 3, h, w), torch.ones(b, 2, 1, h, w)
        planes = torch.tensor([[0.0, 0.0, 1.2], [0.0, 0.0, 4.0]]).expand(b, 2, 3)
        out = render_layers(imgs, alphas, planes, 10.0, 0.5, impl="cuda")
        ref = render_layers(imgs, alphas, planes, 10.0, 0.5, impl="torch")
        for a, r, c in zip(out, ref, (3, 1)):
            assert a.shape == r.shape == (b, c, h, w)
        premult = torch.zeros(b, 2, 4, h, w)
        u, wts = torch.zeros(1, 2), torch.ones(1)
        colour, weight = layers_mod._layers_cuda(premult, planes, torch.ones(b), torch.zeros(b), u, wts, 0.0, 1)
        assert colour.shape == (b, 3, h, w) and weight.shape == (b, 1, h, w)
    assert cuda_emulation == []
