/* reste fused training kernels: the sign forward and the STE / ReSTE backward in one pass
   (see reste/fused.py, which compiles this file through reste.native and calls it via ctypes). */

#include <stdint.h>
#include <string.h>

static inline float as_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t as_u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float absf(float x) { return as_f(as_u(x) & 0x7fffffffu); }

/* ReSTE's power law w = inv_o * c^p for c in [m, t] (positive, normal) is 2^(p log2 c), computed in
   blocks of BLOCK elements in three short passes (log2, exp2, select and multiply): each pass is a
   short dependency chain, so the CPU overlaps many iterations of it (one long pass is about 1.5x
   slower).
   log2: c = 2^e * r with r in [sqrt(1/2), sqrt(2)) taken from the bits; log2(r) = z * P(z), z = r - 1,
   P of degree 8 fitted at Chebyshev nodes (error < 1.4e-8).
   exp2: y = k + f, k the nearest integer, |f| <= 1/2; 2^f by a degree-6 Chebyshev fit (relative
   error < 2.6e-9), 2^k put in the exponent bits. */
#define BLOCK 256

static inline float log2_pos(float c) {
    uint32_t b = as_u(c);
    int32_t e = (int32_t)(b - 0x3f3504f3u) >> 23;          /* 0x3f3504f3 = sqrt(1/2) */
    float z = as_f(b - ((uint32_t)e << 23)) - 1.0f;
    float q = 1.4426950037552788f + z * (-0.72134733327414691f + z * (0.480910612331234f +
              z * (-0.36070483806035292f + z * (0.28791824350826672f + z * (-0.23892004127401462f +
              z * (0.21567042727175798f + z * (-0.20742355133111878f + z * 0.1261500206583295f)))))));
    return (float)e + z * q;
}

static inline float exp2_mid(float y) {                    /* |y| <= 125 */
    int32_t k = (int32_t)(y + 128.5f) - 128;                /* y + 128.5 > 0: truncation rounds */
    float f = y - (float)k;
    float q = 0.9999999999595288f + f * (0.693147206721803f + f * (0.240226512137884f +
              f * (0.05550327190351017f + f * (0.009618025577148914f + f * (0.001340044170874983f +
              f * 0.00015469740243467884f)))));
    return q * as_f((uint32_t)(k + 127) << 23);
}

/* y = +1 where x >= 0 (-0 included), -1 where x < 0, NaN where x is NaN. */
static void sign_range(const float *x, float *y, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
        float v = x[i];
        float s = v < 0.0f ? -1.0f : 1.0f;
        y[i] = v == v ? s : v;
    }
}

/* STE: out = g * (|x| <= clip). */
static void ste_range(const float *x, const float *g, float *out, float clip, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) out[i] = g[i] * (absf(x[i]) <= clip ? 1.0f : 0.0f);
}

/* ReSTE: out = g * (c0 on |x| <= m; inv_o |x|^p on m < |x| <= t; 0 beyond t; NaN for NaN x). */
static void reste_range(const float *x, const float *g, float *out, float p, float inv_o, float t, float m,
                        float c0, int64_t lo, int64_t hi) {
    float w[BLOCK];
    for (int64_t s = lo; s < hi; s += BLOCK) {
        int64_t n = hi - s < BLOCK ? hi - s : BLOCK;
        const float *xs = x + s;
        for (int64_t i = 0; i < n; i++) {
            float a = absf(xs[i]);
            float c = a < m ? m : (a > t ? t : a);
            float y = p * log2_pos(c);
            w[i] = y < -125.0f ? -125.0f : (y > 125.0f ? 125.0f : y);
        }
        for (int64_t i = 0; i < n; i++) w[i] = inv_o * exp2_mid(w[i]);
        for (int64_t i = 0; i < n; i++) {
            float v = xs[i];
            float a = absf(v);
            float r = a <= m ? c0 : (a <= t ? w[i] : 0.0f);
            r = v == v ? r : v;
            out[s + i] = g[s + i] * r;
        }
    }
}

/* The entry points split [0, n) into chunks over `threads` OpenMP threads (built with -fopenmp: the
   runtime is torch's own, so its already running workers take the chunks); built without OpenMP the
   pragma is ignored and one thread does all. */
#define CHUNK 16384
#define SPLIT(n, threads, call)                                                                   \
    int64_t chunks = ((n) + CHUNK - 1) / CHUNK;                                                   \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if(threads > 1 && chunks > 3)") \
    for (int64_t c = 0; c < chunks; c++) {                                                        \
        int64_t lo = c * CHUNK, hi = lo + CHUNK < (n) ? lo + CHUNK : (n);                         \
        call;                                                                                     \
    }

void reste_sign_f32(const float *x, float *y, int64_t n, int32_t threads) {
    SPLIT(n, threads, sign_range(x, y, lo, hi))
}

void reste_ste_bwd_f32(const float *x, const float *g, float *out, float clip, int64_t n, int32_t threads) {
    SPLIT(n, threads, ste_range(x, g, out, clip, lo, hi))
}

void reste_reste_bwd_f32(const float *x, const float *g, float *out, float p, float inv_o, float t, float m,
                         float c0, int64_t n, int32_t threads) {
    SPLIT(n, threads, reste_range(x, g, out, p, inv_o, t, m, c0, lo, hi))
}
