// CUDA twin of kernels/scatter.py::_scatter_torch (same formulas; see that module for the model).
// One thread per pixel; float32 throughout. Compiled lazily by CuPy (kernels/_backend.py::load_kernel).

__device__ __forceinline__ float clamp01(float v) { return fminf(fmaxf(v, 0.0f), 1.0f); }

// Soft aperture membership, kernels/aperture.py::membership.
__device__ __forceinline__ float membership(float r, float dist, float height, float apothem) {
    float m = r + (0.5f - dist);
    if (apothem != 1.0f) m = fminf(m, r * apothem + (0.5f - height));
    return clamp01(m);
}

// kernels/aperture.py::polygon_edge_height: offset length along the normal of the edge it points at.
__device__ __forceinline__ float edge_height(int dy, int dx, float dist, int blades, float rot) {
    if (blades == 0 || dist == 0.0f) return dist;
    const float sector = 6.283185307179586f / blades;
    float phi = atan2f((float)dy, (float)dx) - rot - 0.5f * sector;
    phi = fmodf(phi + 0.5f * sector, sector);
    if (phi < 0.0f) phi += sector;
    return dist * cosf(phi - 0.5f * sector);
}

// Per-source normaliser: inv_norm = 1 / sum_o membership(|coc|, o); self_w = membership(|coc|, 0) * inv_norm.
// Sign independent: the offsets within reach form a point-symmetric set, so the reflected aperture of a source
// with coc > 0 sums the same terms.
extern "C" __global__ void scatter_norm(const float* __restrict__ coc, float* __restrict__ inv_norm,
                                        float* __restrict__ self_w, int B, int H, int W, float max_radius,
                                        int blades, float rot, float apothem) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)B * H * W) return;
    const float r = fabsf(coc[idx]);
    const float reach = max_radius + 0.5f;
    const int n = (int)ceilf(reach);
    float norm = 0.0f;
    for (int dy = -n; dy <= n; ++dy) {
        for (int dx = -n; dx <= n; ++dx) {
            const float dist = sqrtf((float)(dx * dx + dy * dy));
            if (dist >= reach && !(dx == 0 && dy == 0)) continue;
            norm += membership(r, dist, edge_height(dy, dx, dist, blades, rot), apothem);
        }
    }
    const float inv = 1.0f / norm;
    inv_norm[idx] = inv;
    self_w[idx] = membership(r, 0.0f, 0.0f, apothem) * inv;
}

// Gather: target p receives from every source q = p - o with the occlusion-aware effective radius
// rho = r_q - s * max(r_q - r_p, 0), s = clamp(coc_p - margin - coc_q, 0, 1).
extern "C" __global__ void scatter_gather(const float* __restrict__ colour, const float* __restrict__ coc,
                                          const float* __restrict__ inv_norm, float* __restrict__ acc_c,
                                          float* __restrict__ acc_w, int B, int H, int W, float max_radius,
                                          int blades, float rot, float apothem, float margin) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    const long hw = (long)H * W;
    if (idx >= (long)B * hw) return;
    const int b = (int)(idx / hw);
    const int y = (int)((idx % hw) / W);
    const int x = (int)(idx % W);
    const float coc_p = coc[idx] - margin;
    const float r_p = fabsf(coc[idx]);
    const float reach = max_radius + 0.5f;
    const int n = (int)ceilf(reach);
    const float* cb = colour + (long)b * 3 * hw;
    float aw = 0.0f, a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
    for (int dy = -n; dy <= n; ++dy) {
        const int qy = y - dy;
        if (qy < 0 || qy >= H) continue;
        for (int dx = -n; dx <= n; ++dx) {
            const int qx = x - dx;
            if (qx < 0 || qx >= W || (dx == 0 && dy == 0)) continue;
            const float dist = sqrtf((float)(dx * dx + dy * dy));
            if (dist >= reach) continue;
            const long q = (long)b * hw + (long)qy * W + qx;
            const float c_q = coc[q];
            const float r_q = fabsf(c_q);
            const float s = clamp01(coc_p - c_q);
            const float rho = r_q - s * fmaxf(r_q - r_p, 0.0f);
            // Sources in front of focus (coc > 0) splat the point-reflected aperture, as the thin lens images
            // them (kernels/aperture.py); only odd polygons differ, so even ones keep the unreflected call.
            const bool flip = (blades & 1) && c_q > 0.0f;
            const float height = flip ? edge_height(-dy, -dx, dist, blades, rot)
                                      : edge_height(dy, dx, dist, blades, rot);
            const float m = membership(rho, dist, height, apothem);
            if (m == 0.0f) continue;
            const float wq = m * inv_norm[q];
            const long qp = (long)qy * W + qx;
            aw += wq;
            a0 += wq * cb[qp];
            a1 += wq * cb[hw + qp];
            a2 += wq * cb[2 * hw + qp];
        }
    }
    acc_w[idx] = aw;
    float* ob = acc_c + (long)b * 3 * hw + (long)y * W + x;
    ob[0] = a0;
    ob[hw] = a1;
    ob[2 * hw] = a2;
}
