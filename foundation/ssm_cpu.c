/* The selective scan as one pass over time per (direction, batch, channel) row, for CPUs.
 *
 * Why hand-written: a torch scan on a CPU materialises [l, b, d, n] decays, inputs and states and pays a
 * memory pass (and an operator) for each; here a row's n states live in registers, each decay is computed
 * once, and the backward pass recomputes a row's states into an l x n scratch buffer that stays in cache.
 * The elementwise steps around the recurrence (bias, softplus, the padding mask, their derivative, D) run
 * here too, vectorised over time, so a call does no other pass over its inputs.
 * Built at first use by foundation/native.py (any C99 compiler with GCC/Clang vector extensions); the chunked
 * torch scan is the fallback.
 *
 * The states are processed W = 8 at a time as vector-extension values (one AVX register, two SSE or NEON
 * ones); n is padded to a multiple of W inside the kernel (A = B = C = 0: those states stay 0), n <= 512.
 *
 * Layouts (all float32, contiguous): u, delta, y, gy, du, ddelta [k, b, d, l]; A, dA [k, d, n];
 * B, C, dB, dC [k, b, g, n, l] (g groups of d / g channels share them); D, bias, dD, dbias [k, d];
 * mask [b, l] bytes (0 = padded step: its delta is 0, so the state passes through it unchanged);
 * glast, last [k, b, d, n]. delta is the raw step: dt = softplus(delta + bias) (or delta + bias) times the
 * mask. Direction i scans from the first step when (i + reverse) is even.
 * Rows kb = i * b + batch in [kb0, kb1) are done by one call, split into parts (threads; see the exported
 * kernels at the end); dA, dD and dbias are accumulated into each part's own buffers; dB and dC of a
 * (direction, batch) pair are written whole by the one part that owns it.
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
 * state bit for bit); x is clamped to [-87.3, 88.3] (below, exp(-87.3) ~ 1e-38: a decayed state is gone either
 * way). k = round(x / ln 2) by adding and subtracting 1.5 * 2^23 (round to nearest, exact for |k| < 2^22). */
static inline vf vexp(vf x) {
    const vf xc = blend(x < -87.3f, splat(-87.3f), blend(x > 88.3f, splat(88.3f), x));
    const vf k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const vi ki = __builtin_convertvector(k, vi);
    const vf r = (xc - k * 0.693359375f) + k * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vf scale = (vf)((ki + 127) << 23);
    return p * scale;
}

/* log1p(y) for y in [0, 1] as 2 atanh(y / (2 + y)), odd series to r^13 (r <= 1/3: below 1e-7 relative; no
 * cancellation for small y). */
static inline vf vlog1p01(vf y) {
    const vf r = y / (y + 2.0f), r2 = r * r;
    vf p = splat(1.0f / 13.0f);
    p = p * r2 + 1.0f / 11.0f;
    p = p * r2 + 1.0f / 9.0f;
    p = p * r2 + 1.0f / 7.0f;
    p = p * r2 + 1.0f / 5.0f;
    p = p * r2 + 1.0f / 3.0f;
    p = p * r2 + 1.0f;
    return 2.0f * r * p;
}

/* softplus as torch computes it (x above 20 passes through) and its derivative sigmoid(x). */
static inline vf vsoftplus(vf x) {
    const vf ax = blend(x < 0.0f, -x, x);
    return blend(x > 20.0f, x, blend(x > 0.0f, x, splat(0.0f)) + vlog1p01(vexp(-ax)));
}
static inline vf vsigmoid(vf x) { return blend(x > 20.0f, splat(1.0f), 1.0f / (1.0f + vexp(-x))); }

/* A row's steps dt[t] = softplus(delta[t] + bias) * mask[t] and, where asked, d dt / d delta. */
static inline void steps_vector(vf x, const uint8_t *mask_at, int64_t c, int use_softplus, vf *v, vf *f, int want_f) {
    *v = use_softplus ? vsoftplus(x) : x;
    if (want_f) *f = use_softplus ? vsigmoid(x) : splat(1.0f);
    if (mask_at) {
        vi keep = {0};
        for (int64_t j = 0; j < c; ++j) keep[j] = mask_at[j] ? -1 : 0;
        *v = blend(keep, *v, splat(0.0f));
        if (want_f) *f = blend(keep, *f, splat(0.0f));
    }
}
static void row_steps(const float *dr, int64_t L, float bias, const uint8_t *mask_row, int use_softplus, float *dt,
                      float *factor) {
    int64_t t = 0;
    vf v, f = splat(0.0f);
    for (; t + W <= L; t += W) {
        steps_vector(load(dr + t) + bias, mask_row ? mask_row + t : 0, W, use_softplus, &v, &f, factor != 0);
        store(dt + t, v);
        if (factor) store(factor + t, f);
    }
    if (t < L) {  /* the last, partial vector through a zero-padded buffer */
        const int64_t c = L - t;
        float buf[W] = {0}, out[W], fout[W];
        for (int64_t j = 0; j < c; ++j) buf[j] = dr[t + j];
        steps_vector(load(buf) + bias, mask_row ? mask_row + t : 0, c, use_softplus, &v, &f, factor != 0);
        store(out, v);
        store(fout, f);
        for (int64_t j = 0; j < c; ++j) {
            dt[t + j] = out[j];
            if (factor) factor[t + j] = fout[j];
        }
    }
}

/* [n, l] -> time-major [l, np] with zero padding (np >= n), and back (adding nothing: a plain write). */
static void to_time_major(const float *src, int64_t N, int64_t L, int64_t NP, float *dst) {
    memset(dst, 0, (size_t)(L * NP) * sizeof(float));
    for (int64_t n = 0; n < N; ++n)
        for (int64_t t = 0; t < L; ++t) dst[t * NP + n] = src[n * L + t];
}
static void from_time_major(const float *src, int64_t N, int64_t L, int64_t NP, float *dst) {
    for (int64_t n = 0; n < N; ++n)
        for (int64_t t = 0; t < L; ++t) dst[n * L + t] = src[t * NP + n];
}

static int64_t padded(int64_t N) { return (N + W - 1) / W * W; }

/* Group grp of row kb's B and C as time-major [l, np] rows. */
static void load_group(const float *B, const float *C, int64_t kb, int64_t G, int64_t grp, int64_t N, int64_t L,
                       int64_t NP, float *Bt, float *Ct) {
    to_time_major(B + (kb * G + grp) * N * L, N, L, NP, Bt);
    to_time_major(C + (kb * G + grp) * N * L, N, L, NP, Ct);
}

/* A row of n floats as nv vectors, zero past n. */
static void load_row(const float *src, int64_t N, int64_t nv, vf *out) {
    float buf[W * MAX_VECTORS];
    memset(buf, 0, sizeof(float) * (size_t)(nv * W));
    memcpy(buf, src, (size_t)N * sizeof(float));
    for (int64_t j = 0; j < nv; ++j) out[j] = load(buf + j * W);
}

/* work: (2 * np + 1 + W) * l floats of scratch (np = n rounded up to a multiple of W). */
static int64_t fwd_work(int64_t N, int64_t L) { return (2 * padded(N) + 1 + W) * L; }
static void scan_fwd_rows(int64_t Bn, int64_t D, int64_t G, int64_t N, int64_t L, const float *u,
                          const float *delta, const float *A, const float *B, const float *C, const float *Dv,
                          const float *bias, const uint8_t *mask, int use_softplus, int reverse, float *y, float *last,
                          float *work, int64_t kb0, int64_t kb1) {
    const int64_t per_group = D / G, NP = padded(N), nv = NP / W;
    float *Bt = work, *Ct = work + L * NP, *dts = work + 2 * L * NP, *accs = dts + L;
    vf h[MAX_VECTORS], Av[MAX_VECTORS];
    float row_h[W * MAX_VECTORS];
    for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t i = kb / Bn;
        const int forward = ((i + reverse) % 2) == 0;
        const uint8_t *mask_row = mask ? mask + (kb % Bn) * L : 0;
        for (int64_t grp = 0; grp < G; ++grp) {
            load_group(B, C, kb, G, grp, N, L, NP, Bt, Ct);
            for (int64_t d = grp * per_group; d < (grp + 1) * per_group; ++d) {
                const int64_t row = kb * D + d, pd = i * D + d;
                const float *ur = u + row * L;
                const float skip = Dv ? Dv[pd] : 0.0f;
                float *yr = y + row * L;
                row_steps(delta + row * L, L, bias ? bias[pd] : 0.0f, mask_row, use_softplus, dts, 0);
                load_row(A + pd * N, N, nv, Av);
                for (int64_t j = 0; j < nv; ++j) h[j] = splat(0.0f);
                for (int64_t s = 0; s < L; ++s) {
                    const int64_t t = forward ? s : L - 1 - s;
                    const float dt = dts[t];
                    const vf dtv = splat(dt), duv = splat(dt * ur[t]);
                    const float *Bs = Bt + t * NP, *Cs = Ct + t * NP;
                    vf acc = splat(0.0f);
                    for (int64_t j = 0; j < nv; ++j) {
                        h[j] = vexp(dtv * Av[j]) * h[j] + duv * load(Bs + j * W);
                        acc += load(Cs + j * W) * h[j];
                    }
                    store(accs + t * W, acc);
                }
                /* The sums over states, off the recurrence's path. */
                for (int64_t t = 0; t < L; ++t) yr[t] = hsum(load(accs + t * W)) + skip * ur[t];
                for (int64_t j = 0; j < nv; ++j) store(row_h + j * W, h[j]);
                memcpy(last + row * N, row_h, (size_t)N * sizeof(float));
            }
        }
    }
}

/* work: (7 * np + 2 + 2 * W) * l + np floats of scratch. */
static int64_t bwd_work(int64_t N, int64_t L) { return (7 * padded(N) + 2 + 2 * W) * L + padded(N); }
static void scan_bwd_rows(int64_t Bn, int64_t D, int64_t G, int64_t N, int64_t L, const float *u,
                          const float *delta, const float *A, const float *B, const float *C, const float *Dv,
                          const float *bias, const uint8_t *mask, int use_softplus, int reverse, const float *gy,
                          const float *glast, float *du, float *ddelta, float *dA, float *dB, float *dC, float *dD,
                          float *dbias, float *work, int64_t kb0, int64_t kb1) {
    const int64_t per_group = D / G, NP = padded(N), nv = NP / W;
    float *Bt = work, *Ct = Bt + L * NP, *dBt = Ct + L * NP, *dCt = dBt + L * NP;
    /* hs row 0 is the zero state before the first step, row s + 1 the state after step s (scan order). */
    float *hs = dCt + L * NP, *as = hs + (L + 1) * NP, *dts = as + L * NP, *factor = dts + L;
    float *dus_s = factor + L, *ddt_s = dus_s + L * W;
    vf lam[MAX_VECTORS], Av[MAX_VECTORS], dAv[MAX_VECTORS];
    float dA_row[W * MAX_VECTORS];
    memset(hs, 0, (size_t)NP * sizeof(float));
    for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t i = kb / Bn;
        const int forward = ((i + reverse) % 2) == 0;
        const uint8_t *mask_row = mask ? mask + (kb % Bn) * L : 0;
        for (int64_t grp = 0; grp < G; ++grp) {
            load_group(B, C, kb, G, grp, N, L, NP, Bt, Ct);
            memset(dBt, 0, (size_t)(2 * L * NP) * sizeof(float));
            for (int64_t d = grp * per_group; d < (grp + 1) * per_group; ++d) {
                const int64_t row = kb * D + d, pd = i * D + d;
                const float *ur = u + row * L, *gr = gy + row * L;
                const float skip = Dv ? Dv[pd] : 0.0f;
                row_steps(delta + row * L, L, bias ? bias[pd] : 0.0f, mask_row, use_softplus, dts, factor);
                load_row(A + pd * N, N, nv, Av);
                for (int64_t j = 0; j < nv; ++j) dAv[j] = lam[j] = splat(0.0f);
                if (glast) load_row(glast + row * N, N, nv, lam);
                /* Recompute the row's decays and states (scan order s). */
                for (int64_t s = 0; s < L; ++s) {
                    const int64_t t = forward ? s : L - 1 - s;
                    const float dt = dts[t];
                    const vf dtv = splat(dt), duv = splat(dt * ur[t]);
                    const float *Bs = Bt + t * NP;
                    for (int64_t j = 0; j < nv; ++j) {
                        const vf a = vexp(dtv * Av[j]);
                        store(as + s * NP + j * W, a);
                        store(hs + (s + 1) * NP + j * W, a * load(hs + s * NP + j * W) + duv * load(Bs + j * W));
                    }
                }
                /* The adjoint lam = dL/dh, from the last step back to the first. */
                float dD_row = 0.0f, dbias_row = 0.0f;
                for (int64_t s = L - 1; s >= 0; --s) {
                    const int64_t t = forward ? s : L - 1 - s;
                    const float g = gr[t], dt = dts[t], ut = ur[t];
                    const vf gv = splat(g), dtv = splat(dt), uv = splat(ut), dtuv = splat(dt * ut);
                    const float *Bs = Bt + t * NP, *Cs = Ct + t * NP;
                    float *dBs = dBt + t * NP, *dCs = dCt + t * NP;
                    vf ddt = splat(0.0f), dus = splat(0.0f);
                    for (int64_t j = 0; j < nv; ++j) {
                        const int64_t o = j * W;
                        const vf l = lam[j] + load(Cs + o) * gv, a = load(as + s * NP + o), Bv = load(Bs + o);
                        store(dCs + o, load(dCs + o) + gv * load(hs + (s + 1) * NP + o));
                        const vf dec = l * a * load(hs + s * NP + o); /* dL/d(dt * A) */
                        ddt += dec * Av[j] + l * Bv * uv;
                        dAv[j] += dec * dtv;
                        store(dBs + o, load(dBs + o) + l * dtuv);
                        dus += l * Bv;
                        lam[j] = l * a;
                    }
                    store(dus_s + t * W, dus);
                    store(ddt_s + t * W, ddt);
                }
                /* The sums over states, off the adjoint's path. */
                for (int64_t t = 0; t < L; ++t) {
                    const float g = gr[t], dd = hsum(load(ddt_s + t * W)) * factor[t];
                    du[row * L + t] = hsum(load(dus_s + t * W)) * dts[t] + skip * g;
                    dD_row += g * ur[t];
                    ddelta[row * L + t] = dd;
                    dbias_row += dd;
                }
                for (int64_t j = 0; j < nv; ++j) store(dA_row + j * W, dAv[j]);
                for (int64_t n = 0; n < N; ++n) dA[pd * N + n] += dA_row[n];
                if (dD) dD[pd] += dD_row;
                if (dbias) dbias[pd] += dbias_row;
            }
            from_time_major(dBt, N, L, NP, dB + (kb * G + grp) * N * L);
            from_time_major(dCt, N, L, NP, dC + (kb * G + grp) * N * L);
        }
    }
}

/* The exported kernels: rows [kb0, kb1) split into nparts equal ranges, part p with its own scratch
 * (work + p * fwd_work / bwd_work) and, backward, its own dA, dD and dbias sums (dA + p * K * D * N, K the
 * number of directions). Built with OpenMP, the parts run on the process's OpenMP threads, the same pool (one
 * libgomp) torch's operators use: threads of our own would compete for the cores with torch's, which keep
 * spinning for a while after each operator. Without OpenMP the caller passes nparts = 1 per thread it runs. */
void eegfm_scan_fwd(int64_t Bn, int64_t D, int64_t G, int64_t N, int64_t L, const float *u, const float *delta,
                    const float *A, const float *B, const float *C, const float *Dv, const float *bias,
                    const uint8_t *mask, int use_softplus, int reverse, float *y, float *last, float *work,
                    int64_t kb0, int64_t kb1, int64_t nparts) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(nparts) schedule(static, 1) if (nparts > 1)
#endif
    for (int64_t p = 0; p < nparts; ++p)
        scan_fwd_rows(Bn, D, G, N, L, u, delta, A, B, C, Dv, bias, mask, use_softplus, reverse, y, last,
                      work + p * fwd_work(N, L), kb0 + (kb1 - kb0) * p / nparts, kb0 + (kb1 - kb0) * (p + 1) / nparts);
}

void eegfm_scan_bwd(int64_t K, int64_t Bn, int64_t D, int64_t G, int64_t N, int64_t L, const float *u,
                    const float *delta, const float *A, const float *B, const float *C, const float *Dv,
                    const float *bias, const uint8_t *mask, int use_softplus, int reverse, const float *gy,
                    const float *glast, float *du, float *ddelta, float *dA, float *dB, float *dC, float *dD,
                    float *dbias, float *work, int64_t kb0, int64_t kb1, int64_t nparts) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(nparts) schedule(static, 1) if (nparts > 1)
#endif
    for (int64_t p = 0; p < nparts; ++p)
        scan_bwd_rows(Bn, D, G, N, L, u, delta, A, B, C, Dv, bias, mask, use_softplus, reverse, gy, glast, du,
                      ddelta, dA + p * K * D * N, dB, dC, dD ? dD + p * K * D : 0, dbias ? dbias + p * K * D : 0,
                      work + p * bwd_work(N, L), kb0 + (kb1 - kb0) * p / nparts, kb0 + (kb1 - kb0) * (p + 1) / nparts);
}

/* Floats of scratch one part needs (what the caller allocates per part). */
int64_t eegfm_scan_work(int64_t N, int64_t L, int backward) { return backward ? bwd_work(N, L) : fwd_work(N, L); }

/* 1 where this library was built with OpenMP (the exported kernels then split their parts between threads). */
int eegfm_scan_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
