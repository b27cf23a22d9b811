// CUDA twin of kernels/layers.py::_layers_torch (thin-lens ray tracing of RGBA layers on planes).
// One thread per output pixel, looping over aperture samples and layers front to back. float32.
//
// mip: per batch item, all mip levels of all layers' premultiplied RGBA, concatenated; meta[0 : L*levels]
// holds each (layer, level)'s offset into an item's slab, meta[L*levels :] its (height, width) pairs.

__device__ __forceinline__ void bilinear_rgba(const float* __restrict__ lev, int hk, int wk, float xs, float ys,
                                              float wgt, float* acc) {
    // Bilinear sample at level pixel-centre coordinates (xs, ys); zero outside (grid_sample "zeros").
    const float fx0 = floorf(xs), fy0 = floorf(ys);
    const int x0 = (int)fx0, y0 = (int)fy0;
    const float fx = xs - fx0, fy = ys - fy0;
    const long plane = (long)hk * wk;
    for (int oy = 0; oy <= 1; ++oy) {
        const int yi = y0 + oy;
        if (yi < 0 || yi >= hk) continue;
        const float wy = oy ? fy : 1.0f - fy;
        for (int ox = 0; ox <= 1; ++ox) {
            const int xi = x0 + ox;
            if (xi < 0 || xi >= wk) continue;
            const float w = wgt * wy * (ox ? fx : 1.0f - fx);
            const long p = (long)yi * wk + xi;
            for (int c = 0; c < 4; ++c) acc[c] += w * lev[c * plane + p];
        }
    }
}

extern "C" __global__ void layers_trace(const float* __restrict__ mip, const int* __restrict__ meta, long total,
                                        const float* __restrict__ planes, const float* __restrict__ K,
                                        const float* __restrict__ focus, const float* __restrict__ u,
                                        const float* __restrict__ wts, int S, int B, int L, int levels, int H,
                                        int W, float spacing_unit, float* __restrict__ colour_sum,
                                        float* __restrict__ weight) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    const long hw = (long)H * W;
    if (idx >= (long)B * hw) return;
    const int b = (int)(idx / hw);
    const float py = (float)((idx % hw) / W);
    const float px = (float)(idx % W);
    const float k = K[b], f = focus[b];
    const float* item = mip + (long)b * total;
    const int hp = meta[L * levels + 0], wp = meta[L * levels + 1];  // padded level-0 extent
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, cover = 0.0f;
    for (int s = 0; s < S; ++s) {
        const float ux = u[2 * s], uy = u[2 * s + 1], ws = wts[s];
        float trans = 1.0f;
        for (int l = 0; l < L; ++l) {
            const float pa = planes[(b * L + l) * 3], pb = planes[(b * L + l) * 3 + 1];
            const float pc = planes[(b * L + l) * 3 + 2];
            float x = px, y = py, lod = 0.0f;
            if (ux != 0.0f || uy != 0.0f) {
                // Solve x = p + K (d(x) - f) u for the plane d = (1 - A x - B y) / C (see layers.py).
                const float gx = k / pc * ux, gy = k / pc * uy;
                const float w0x = px + (gx - k * f * ux), w0y = py + (gy - k * f * uy);
                float den = 1.0f + pa * gx + pb * gy;
                if (fabsf(den) < 1e-6f) den = den < 0.0f ? -1e-6f : 1e-6f;
                const float t = (pa * w0x + pb * w0y) / den;
                x = w0x - gx * t;
                y = w0y - gy * t;
                if (spacing_unit > 0.0f && levels > 1) {
                    const float coc = k * ((1.0f - pa * x - pb * y) / pc - f);
                    lod = log2f(fmaxf(fabsf(coc) * spacing_unit, 1.0f));
                }
            }
            lod = fminf(fmaxf(lod, 0.0f), (float)(levels - 1));
            const int lo = (int)floorf(lod);
            const float frac = lod - (float)lo;
            float rgba[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int lev = lo; lev <= lo + 1 && lev < levels; ++lev) {
                const float wl = lev == lo ? 1.0f - frac : frac;
                if (wl == 0.0f) continue;
                const int slot = l * levels + lev;
                const int hk = meta[L * levels + 2 * slot], wk = meta[L * levels + 2 * slot + 1];
                // Level-k pixel centre of a level-0 coordinate; all levels span the same padded extent.
                const float xs = (x + 0.5f) * ((float)wk / (float)wp) - 0.5f;
                const float ys = (y + 0.5f) * ((float)hk / (float)hp) - 0.5f;
                bilinear_rgba(item + meta[slot], hk, wk, xs, ys, wl, rgba);
            }
            const float tw = trans * ws;
            s0 += tw * rgba[0];
            s1 += tw * rgba[1];
            s2 += tw * rgba[2];
            trans *= 1.0f - rgba[3];
        }
        cover += (1.0f - trans) * ws;
    }
    float* ob = colour_sum + (long)b * 3 * hw + (idx % hw);
    ob[0] = s0;
    ob[hw] = s1;
    ob[2 * hw] = s2;
    weight[idx] = cover;
}
