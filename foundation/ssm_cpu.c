/* The selective scan as one pass over time per (direction, batch, channel) row, for CPUs.
 *
 * Why hand-written: a torch scan on a CPU materialises [l, b, d, n] decays, inputs and states and pays a
 * memory pass (and an operator) for each; here a row's n states live in registers, each decay is computed
 * once, and the backward pass recomputes a row's states into an l x n scratch buffer that stays in cache.
 * Built at first use by foundation/ssm_cpu.py (any C99 compiler); the chunked torch scan is the fallback.
 *
 * The states are processed W = 8 at a time as GCC/Clang vector-extension values (one AVX register, two SSE or
 * NEON ones): n must be a multiple of W (the caller pads with A = B = C = 0, states that stay 0), n <= 512.
 *
 * Layouts (all float32, contiguous): u, dt, y, gy, du, ddt [k, b, d, l]; A [k, d, n]; B, C, dB, dC
 * time-major [k, b, g, l, n] (g groups of d / g channels share them); D [k, d]; glast, last [k, b, d, n].
 * dt is the effective step (after bias, softplus and the padding mask: 0 at a padded step, where the state
 * passes through unchanged); the caller applies those elementwise before and after (vectorised by torch).
 * Direction i scans from the first step when (i + reverse) is even.
 * Rows kb = i * b + batch in [kb0, kb1) are done by one call (callers split rows between threads); dA and
 * dD are accumulated into the caller's per-thread buffers, dB and dC into zeroed outputs (a (direction,
 * batch) pair belongs to one call, so no two calls write the same entries).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define W 8
#define MAX_VECTORS 64
typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
/* The same vectors at any float alignment: loads and stores of rows of B, C and the scratch buffers. */
typedef float vf_u __attribute__((vector_size(4 * W), aligned(4)));

static inline vf splat(float x) { return (vf){0} + x; }
static inline vf load(const float *p) { return *(const vf_u *)p; }
static inline void store(float *p, vf v) { *(vf_u *)p = v; }
static inline vf blend(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
}

/* exp(x), lane-wise: Cody-Waite range reduction and a degree-6 polynomial (Cephes expf, < 2 ulp) in plain
 * vector arithmetic (libm's expf would be one call per lane). exp(0) is exactly 1 (a padded step keeps its
 * state bit for bit); below -87.3 the result is 0, above 88.3 it saturates at exp(88.3). */
static inline vf vexp(vf x) {
    const vf xc = blend(x < -87.3f, splat(-87.3f), blend(x > 88.3f, splat(88.3f), x));
    const vf t = xc * 1.44269504088896341f;
    const vi ki = __builtin_convertvector(t + blend(t >= 0.0f, splat(0.5f), splat(-0.5f)), vi);
    const vf k = __builtin_convertvector(ki, vf);
    const vf r = (xc - k * 0.693359375f) + k * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vf scale = (vf)((ki + 127) << 23);
    return blend(x < -87.3f, splat(0.0f), p * scale);
}

void eegfm_scan_fwd(int64_t Bn, int64_t D, int64_t G, int64_t N, int64_t L, const float *u,
                    const float *delta, const float *A, const float *B, const float *C, const float *Dv,
                    int reverse, float *y, float *last, int64_t kb0, int64_t kb1) {
    const int64_t per_group = D / G, nv = N / W;
    vf h[MAX_VECTORS], Av[MAX_VECTORS];
    for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t i = kb / Bn;
        const int forward = ((i + reverse) % 2) == 0;
        for (int64_t d = 0; d < D; ++d) {
            const int64_t row = kb * D + d, pd = i * D + d, grp = kb * G + d / per_group;
            const float *ur = u + row * L, *dr = delta + row * L;
            const float *Bg = B + grp * L * N, *Cg = C + grp * L * N;
            const float skip = Dv ? Dv[pd] : 0.0f;
            float *yr = y + row * L;
            for (int64_t j = 0; j < nv; ++j) {
                h[j] = splat(0.0f);
                Av[j] = load(A + pd * N + j * W);
            }
            for (int64_t s = 0; s < L; ++s) {
                const int64_t t = forward ? s : L - 1 - s;
                const float dt = dr[t];
                const vf dtv = splat(dt), duv = splat(dt * ur[t]);
                const float *Bt = Bg + t * N, *Ct = Cg + t * N;
                vf acc = splat(0.0f);
                for (int64_t j = 0; j < nv; ++j) {
                    h[j] = vexp(dtv * Av[j]) * h[j] + duv * load(Bt + j * W);
                    acc += load(Ct + j * W) * h[j];
                }
                yr[t] = hsum(acc) + skip * ur[t];
            }
            for (int64_t j = 0; j < nv; ++j) store(last + row * N + j * W, h[j]);
        }
    }
}

/* work: (2 * L + 1) * N floats of scratch for this call. */
void eegfm_scan_bwd(int64_t Bn, int64_t D, int64_t G, int64_t N, int64_t L, const float *u,
                    const float *delta, const float *A, const float *B, const float *C, const float *Dv,
                    int reverse, const float *gy, const float *glast, float *du, float *ddelta, float *dA,
                    float *dB, float *dC, float *dD, float *work, int64_t kb0, int64_t kb1) {
    const int64_t per_group = D / G, nv = N / W;
    /* hs row 0 is the zero state before the first step, row s + 1 the state after step s (scan order). */
    float *hs = work, *as = work + (L + 1) * N;
    vf lam[MAX_VECTORS], Av[MAX_VECTORS], dAv[MAX_VECTORS];
    memset(hs, 0, (size_t)N * sizeof(float));
    for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t i = kb / Bn;
        const int forward = ((i + reverse) % 2) == 0;
        for (int64_t d = 0; d < D; ++d) {
            const int64_t row = kb * D + d, pd = i * D + d, grp = kb * G + d / per_group;
            const float *ur = u + row * L, *dr = delta + row * L, *gr = gy + row * L;
            const float *Bg = B + grp * L * N, *Cg = C + grp * L * N;
            float *dBg = dB + grp * L * N, *dCg = dC + grp * L * N;
            const float skip = Dv ? Dv[pd] : 0.0f;
            for (int64_t j = 0; j < nv; ++j) {
                Av[j] = load(A + pd * N + j * W);
                dAv[j] = splat(0.0f);
                lam[j] = glast ? load(glast + row * N + j * W) : splat(0.0f);
            }
            /* Recompute the row's decays and states (scan order s). */
            for (int64_t s = 0; s < L; ++s) {
                const int64_t t = forward ? s : L - 1 - s;
                const float dt = dr[t];
                const vf dtv = splat(dt), duv = splat(dt * ur[t]);
                const float *Bt = Bg + t * N;
                for (int64_t j = 0; j < nv; ++j) {
                    const vf a = vexp(dtv * Av[j]);
                    store(as + s * N + j * W, a);
                    store(hs + (s + 1) * N + j * W, a * load(hs + s * N + j * W) + duv * load(Bt + j * W));
                }
            }
            /* The adjoint lam = dL/dh, from the last step back to the first. */
            float dD_row = 0.0f;
            for (int64_t s = L - 1; s >= 0; --s) {
                const int64_t t = forward ? s : L - 1 - s;
                const float g = gr[t], dt = dr[t], ut = ur[t];
                const vf gv = splat(g), dtv = splat(dt), uv = splat(ut), dtuv = splat(dt * ut);
                const float *Bt = Bg + t * N, *Ct = Cg + t * N;
                float *dBt = dBg + t * N, *dCt = dCg + t * N;
                vf ddt = splat(0.0f), dus = splat(0.0f);
                for (int64_t j = 0; j < nv; ++j) {
                    const int64_t o = j * W;
                    const vf l = lam[j] + load(Ct + o) * gv, a = load(as + s * N + o), Bv = load(Bt + o);
                    store(dCt + o, load(dCt + o) + gv * load(hs + (s + 1) * N + o));
                    const vf dec = l * a * load(hs + s * N + o); /* dL/d(dt * A) */
                    ddt += dec * Av[j] + l * Bv * uv;
                    dAv[j] += dec * dtv;
                    store(dBt + o, load(dBt + o) + l * dtuv);
                    dus += l * Bv;
                    lam[j] = l * a;
                }
                du[row * L + t] = hsum(dus) * dt + skip * g;
                dD_row += g * ut;
                ddelta[row * L + t] = hsum(ddt);
            }
            for (int64_t j = 0; j < nv; ++j) store(dA + pd * N + j * W, load(dA + pd * N + j * W) + dAv[j]);
            if (dD) dD[pd] += dD_row;
        }
    }
}
