/* reste packed-model kernels: sign packing, im2col and the XOR/popcount GEMM with its float epilogue
   (see reste/export/kernels.py, which compiles this file through reste.native and calls it via ctypes).
   One source, compiled once per instruction set (-DRESTE_ISA=... plus that set's target flags):
   0 scalar (popcnt per word), 1 AVX2 (nibble-table popcount of bytes, summed per 64-bit lane with SAD),
   2 AVX-512 with VPOPCNTDQ, 3 NEON (vcnt of bytes), 4 AVX-512 F/BW without VPOPCNTDQ (Skylake-SP to Cooper
   Lake: the nibble table of 1 in 512-bit registers, its masking folded into VPTERNLOG). Every variant
   computes the same integers; the float epilogue is compiled with -ffp-contract=off so that it rounds the
   same way everywhere. */

#include <stdint.h>
#include <string.h>

#ifndef RESTE_ISA
#define RESTE_ISA 0
#endif
#define RESTE_AVX512 (RESTE_ISA == 2 || RESTE_ISA == 4)
#define RESTE_BLOCK_EMIT (RESTE_ISA == 1 || RESTE_AVX512)  /* a block_emit of its own (else block_counts) */
#if RESTE_ISA == 1 || RESTE_AVX512
#include <immintrin.h>
#endif
#if RESTE_ISA == 3
#include <arm_neon.h>
#endif

int reste_isa(void) { return RESTE_ISA; }

/* x: (N, H, W, C) float32; out: (N, Hp, Wp, Cb) uint8, interior at (pt, pl); only the first ceil(C / 8)
   bytes of a pixel are written (padding and spare bytes are left as they are: the caller zeroes them).
   Bit i of byte b is x[c = 8b + i] < 0 (false for -0 and NaN, as the float engine's sign). Images n0 .. n1-1. */
void reste_pack_signs(const float *x, int64_t H, int64_t W, int64_t C, uint8_t *out, int64_t Hp,
                      int64_t Wp, int64_t Cb, int64_t pt, int64_t pl, int64_t n0, int64_t n1) {
    int64_t full = C / 8;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t w = 0; w < W; w++) {
                const float *px = x + ((n * H + h) * W + w) * C;
                uint8_t *po = out + ((n * Hp + h + pt) * Wp + w + pl) * Cb;
                int64_t b = 0;
#if RESTE_AVX512
                for (; b + 2 <= full; b += 2) {
                    uint16_t m = (uint16_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(px + 8 * b), _mm512_setzero_ps(),
                                                              _CMP_LT_OQ);
                    memcpy(po + b, &m, 2);
                }
#elif RESTE_ISA == 1
                for (; b < full; b++)
                    po[b] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(px + 8 * b),
                                                                      _mm256_setzero_ps(), _CMP_LT_OQ));
#endif
                for (; b < full; b++) {
                    const float *q = px + 8 * b;
                    po[b] = (uint8_t)((q[0] < 0.0f) | (q[1] < 0.0f) << 1 | (q[2] < 0.0f) << 2 |
                                      (q[3] < 0.0f) << 3 | (q[4] < 0.0f) << 4 | (q[5] < 0.0f) << 5 |
                                      (q[6] < 0.0f) << 6 | (q[7] < 0.0f) << 7);
                }
                if (8 * full < C) {
                    uint8_t v = 0;
                    for (int64_t c = 8 * full; c < C; c++) v |= (uint8_t)(px[c] < 0.0f) << (c - 8 * full);
                    po[full] = v;
                }
            }
}

/* A 64-bit word at any address: a row read in place (kernels.py: Rows, narrow pixels) starts wherever its pixel
   does, so it is generally not 8-byte aligned, and a uint64_t dereference there is undefined behaviour.
   Compilers make this fixed-size memcpy one load. */
static inline uint64_t ld64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Short copies inline (a call to memcpy per few bytes dominates the small-channel layers). */
static inline void copy_bytes(uint8_t *dst, const uint8_t *src, int64_t n) {
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, src, 8);
        memcpy(dst, &v, 8);
        dst += 8; src += 8; n -= 8;
    }
    if (n >= 4) {
        uint32_t v;
        memcpy(&v, src, 4);
        memcpy(dst, &v, 4);
        dst += 4; src += 4; n -= 4;
    }
    if (n >= 2) {
        uint16_t v;
        memcpy(&v, src, 2);
        memcpy(dst, &v, 2);
        dst += 2; src += 2; n -= 2;
    }
    if (n) *dst = *src;
}

/* xp: (N, Hp, Wp, Cb) packed; cols: (N*OH*OW, row_bytes), row = kh x kw pixels of Cb bytes, zero tail. */
void reste_im2col(const uint8_t *xp, int64_t Hp, int64_t Wp, int64_t Cb, int64_t kh, int64_t kw, int64_t sh,
                  int64_t sw, int64_t dh, int64_t dw, int64_t OH, int64_t OW, uint8_t *cols, int64_t row_bytes,
                  int64_t n0, int64_t n1) {
    int64_t used = kh * kw * Cb;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++) {
                uint8_t *dst = cols + ((n * OH + oh) * OW + ow) * row_bytes;
                for (int64_t i = 0; i < kh; i++) {
                    const uint8_t *src = xp + ((n * Hp + oh * sh + i * dh) * Wp + ow * sw) * Cb;
                    if (dw == 1) {
                        copy_bytes(dst, src, kw * Cb);
                        dst += kw * Cb;
                    } else {
                        for (int64_t j = 0; j < kw; j++) {
                            copy_bytes(dst, src + j * dw * Cb, Cb);
                            dst += Cb;
                        }
                    }
                }
                for (int64_t b = used; b < row_bytes; b++) *dst++ = 0;
            }
}

/* ---- popcount micro-kernels: a block of ROWS activation rows x 16 output channels.
   rows[r]: the row's base (bytes); segment s of the row is the L words at rows[r] + off[s]. Wb: the weight
   block, word k of the row (over all segments) for output lane j at Wb[k * 16 + j].
   cnt[r * 16 + j] = sum over the row's words of popcount(a ^ w). */
#define LANES 16

/* What a block writes (see reste_bconv): mode, relu, the row length O, the per-channel arrays, the output. */
typedef struct {
    int32_t mode, relu;
    int64_t O, obytes;
    const float *alpha, *bias, *scale, *shift, *res;
    const int32_t *lo, *hi;
    uint8_t *out;
    uint64_t tail;
} emit_ctx;

/* Mode 3's sign bits of one pixel's lanes (bit j: lane j's float output < 0, as reste_pack_signs), the first
   obytes bytes of the pixel. */
static inline void store_bits(uint8_t *px, int64_t o0, uint32_t bits, int64_t obytes) {
    px[o0 / 8] = (uint8_t)bits;
    if (o0 / 8 + 1 < obytes) px[o0 / 8 + 1] = (uint8_t)(bits >> 8);
}

#if RESTE_AVX512
/* The AVX-512 kernels do a whole block in registers: the counts of output rows m0 + r (r < nr) for the
   channels o0 .. o0+no-1, their dot products t = krow[r] - 2 count - crow[r] (crow[r] NULL: none), and the
   output from t: the float32 operations of lanes_float below, in the same order (no round trip through
   memory between them, which the small layers, few words a row, spent most of their time on).
   emit16: that output for one row m from its 16 counts c (int32). */
static inline void emit16(__m512i c, int32_t krow, const int32_t *crow, uint8_t *px, int64_t m, int64_t o0,
                          int64_t no, const emit_ctx *e) {
    const __mmask16 keep = (__mmask16)((1u << no) - 1);
    __m512i t = _mm512_sub_epi32(_mm512_set1_epi32(krow), _mm512_add_epi32(c, c));
    if (crow) t = _mm512_sub_epi32(t, _mm512_loadu_si512((const void *)(crow + o0)));
    int64_t at = m * e->O + o0;
    if (e->mode == 0) {
        _mm512_mask_storeu_epi32((int32_t *)e->out + at, keep, t);
    } else if (e->mode != 2) {
        __m512 x = _mm512_cvtepi32_ps(t);
        x = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(e->alpha + o0), x), _mm512_loadu_ps(e->bias + o0));
        if (e->scale) {
            /* torch.relu: NaN and -0 kept */
            if (e->relu) x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NLT_UQ), x);
            x = _mm512_add_ps(_mm512_mul_ps(x, _mm512_loadu_ps(e->scale + o0)), _mm512_loadu_ps(e->shift + o0));
        }
        if (e->res) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(keep, e->res + at));
        _mm512_mask_storeu_ps((float *)e->out + at, keep, x);
        if (e->mode == 3) store_bits(px, o0, _mm512_mask_cmp_ps_mask(keep, x, _mm512_setzero_ps(), _CMP_LT_OQ),
                                     e->obytes);
    } else {
        uint32_t bits = _mm512_cmp_epi32_mask(t, _mm512_loadu_si512((const void *)(e->lo + o0)), _MM_CMPINT_NLT) &
                        _mm512_cmp_epi32_mask(t, _mm512_loadu_si512((const void *)(e->hi + o0)), _MM_CMPINT_LE);
        px[o0 / 8] = (uint8_t)bits;
        if (o0 / 8 + 1 < e->obytes) px[o0 / 8 + 1] = (uint8_t)(bits >> 8);
    }
}

/* 16 64-bit counts (a: lanes 0-7, b: 8-15) as 16 int32: the low half of each, in one two-source permute (what
   two VPMOVQD and an insert give, in one instruction instead of five on the port the popcounts need). */
static inline __m512i counts16(__m512i a, __m512i b) {
    const __m512i low = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_epi32(a, low, b);
}
#endif

#if RESTE_ISA == 2
#define ROWS 8
/* XOR, VPOPCNTQ and add: 512 binary multiply-accumulates. */
static void block_emit(const uint8_t *const *rows, int64_t nseg, int64_t L, const int64_t *off,
                       const uint64_t *Wb, int64_t nr, int64_t m0, const int32_t *krow,
                       const int32_t *const *crow, uint8_t *const *px, int64_t o0, int64_t no,
                       const emit_ctx *e) {
    const __m512i keep = _mm512_set1_epi64((long long)~e->tail);
    __m512i acc[ROWS][2];
    for (int r = 0; r < ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int64_t s = 0; s < nseg; s++) {
        const uint8_t *p[ROWS];
        for (int r = 0; r < ROWS; r++) p[r] = rows[r] + off[s];
        const uint64_t *w = Wb + s * L * LANES;
        for (int64_t k = 0; k < L - 1; k++) {
            __m512i w0 = _mm512_loadu_si512((const void *)(w + k * LANES));
            __m512i w1 = _mm512_loadu_si512((const void *)(w + k * LANES + 8));
#pragma GCC unroll 8
            for (int r = 0; r < ROWS; r++) {
                __m512i x = _mm512_set1_epi64((long long)ld64(p[r] + 8 * k));
                acc[r][0] = _mm512_add_epi64(acc[r][0], _mm512_popcnt_epi64(_mm512_xor_si512(x, w0)));
                acc[r][1] = _mm512_add_epi64(acc[r][1], _mm512_popcnt_epi64(_mm512_xor_si512(x, w1)));
            }
        }
        /* the segment's last word: its bits past the window (e->tail) masked off with the XOR, (x ^ w) & keep
           in one VPTERNLOG, so the count has only the window's bits and krow needs no correction (reste_bconv:
           the other variants count those bits per row and add them to krow, a third of the time of a
           16-channel layer here) */
        int64_t k = L - 1;
        __m512i w0 = _mm512_loadu_si512((const void *)(w + k * LANES));
        __m512i w1 = _mm512_loadu_si512((const void *)(w + k * LANES + 8));
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; r++) {
            __m512i x = _mm512_set1_epi64((long long)ld64(p[r] + 8 * k));
            __m512i d0 = _mm512_ternarylogic_epi64(x, w0, keep, 0x28);
            __m512i d1 = _mm512_ternarylogic_epi64(x, w1, keep, 0x28);
            acc[r][0] = _mm512_add_epi64(acc[r][0], _mm512_popcnt_epi64(d0));
            acc[r][1] = _mm512_add_epi64(acc[r][1], _mm512_popcnt_epi64(d1));
        }
    }
    for (int r = 0; r < ROWS && r < nr; r++)
        emit16(counts16(acc[r][0], acc[r][1]), krow[r], crow[r], px[r], m0 + r, o0, no, e);
}
#elif RESTE_ISA == 4
#define ROWS 4
/* No VPOPCNTQ: the popcount of each byte of a ^ w from a 16-entry table of nibbles (VPSHUFB), the nibble
   masking and the XOR in one VPTERNLOG ((A ^ B) & C: 0x28) for the low and for the high nibbles (a >> 4 is
   shifted once per word and row, w >> 4 once per word for the block's rows), so six operations cover 512
   binary multiply-accumulates. Byte counters are summed into 64-bit lanes (SAD) at least every 31 words of
   the row, as in the AVX2 kernel. */
static void block_emit(const uint8_t *const *rows, int64_t nseg, int64_t L, const int64_t *off,
                       const uint64_t *Wb, int64_t nr, int64_t m0, const int32_t *krow,
                       const int32_t *const *crow, uint8_t *const *px, int64_t o0, int64_t no,
                       const emit_ctx *e) {
    const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const __m512i zero = _mm512_setzero_si512();
    __m512i tot[ROWS][2], b[ROWS][2];
    for (int r = 0; r < ROWS; r++) tot[r][0] = tot[r][1] = b[r][0] = b[r][1] = zero;
    int since = 0;
    for (int64_t s = 0; s < nseg; s++) {
        const uint8_t *p[ROWS];
        for (int r = 0; r < ROWS; r++) p[r] = rows[r] + off[s];
        const uint64_t *w = Wb + s * L * LANES;
        for (int64_t k = 0; k < L; k++) {
            __m512i w0 = _mm512_loadu_si512((const void *)(w + k * LANES));
            __m512i w1 = _mm512_loadu_si512((const void *)(w + k * LANES + 8));
            __m512i h0 = _mm512_srli_epi64(w0, 4), h1 = _mm512_srli_epi64(w1, 4);
#pragma GCC unroll 4
            for (int r = 0; r < ROWS; r++) {
                __m512i x = _mm512_set1_epi64((long long)ld64(p[r] + 8 * k)), xh = _mm512_srli_epi64(x, 4);
                __m512i c0 = _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_ternarylogic_epi64(x, w0, nib, 0x28)),
                                             _mm512_shuffle_epi8(lut, _mm512_ternarylogic_epi64(xh, h0, nib, 0x28)));
                __m512i c1 = _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_ternarylogic_epi64(x, w1, nib, 0x28)),
                                             _mm512_shuffle_epi8(lut, _mm512_ternarylogic_epi64(xh, h1, nib, 0x28)));
                b[r][0] = _mm512_add_epi8(b[r][0], c0);
                b[r][1] = _mm512_add_epi8(b[r][1], c1);
            }
            if (++since == 31) {
                for (int r = 0; r < ROWS; r++) {
                    tot[r][0] = _mm512_add_epi64(tot[r][0], _mm512_sad_epu8(b[r][0], zero));
                    tot[r][1] = _mm512_add_epi64(tot[r][1], _mm512_sad_epu8(b[r][1], zero));
                    b[r][0] = b[r][1] = zero;
                }
                since = 0;
            }
        }
    }
    for (int r = 0; r < ROWS && r < nr; r++)
        emit16(counts16(_mm512_add_epi64(tot[r][0], _mm512_sad_epu8(b[r][0], zero)),
                        _mm512_add_epi64(tot[r][1], _mm512_sad_epu8(b[r][1], zero))),
               krow[r], crow[r], px[r], m0 + r, o0, no, e);
}
#elif RESTE_ISA == 1
#define ROWS 4
static inline __m256i pc8(__m256i x, __m256i lut, __m256i nib) {  /* popcount of each byte */
    __m256i lo = _mm256_and_si256(x, nib);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}
/* 8 lanes of 64-bit counts (a: lanes 0-3, b: 4-7) as 8 int32. */
static inline __m256i counts32(__m256i a, __m256i b) {
    __m256i x = _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b),
                                                      _MM_SHUFFLE(2, 0, 2, 0)));  /* a0 a1 b0 b1 a2 a3 b2 b3 */
    return _mm256_permute4x64_epi64(x, _MM_SHUFFLE(3, 1, 2, 0));
}

/* As the AVX-512 block_emit: counts, dot products and output of a block without a round trip through
   memory, in two passes of 8 lanes (h). Byte counters are summed into 64-bit lanes (SAD) at least every
   31 words of the row (whatever its segments), so that they cannot overflow (8 per word). The float32
   operations are lanes_float's, in the same order. */
static void block_emit(const uint8_t *const *rows, int64_t nseg, int64_t L, const int64_t *off,
                       const uint64_t *Wb, int64_t nr, int64_t m0, const int32_t *krow,
                       const int32_t *const *crow, uint8_t *const *px, int64_t o0, int64_t no,
                       const emit_ctx *e) {
    const __m256i lut = _mm256_setr_epi8(0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4,0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4);
    const __m256i nib = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        int64_t valid = no - 8 * h;  /* lanes of this half that exist (<= 0: none) */
        if (valid <= 0) break;
        __m256i tot[ROWS][2], b[ROWS][2];
        for (int r = 0; r < ROWS; r++) tot[r][0] = tot[r][1] = b[r][0] = b[r][1] = zero;
        int since = 0;
        for (int64_t s = 0; s < nseg; s++) {
            const uint8_t *p[ROWS];
            for (int r = 0; r < ROWS; r++) p[r] = rows[r] + off[s];
            const uint64_t *w = Wb + s * L * LANES + 8 * h;
            for (int64_t k = 0; k < L; k++) {
                __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k * LANES));
                __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k * LANES + 4));
#pragma GCC unroll 4
                for (int r = 0; r < ROWS; r++) {
                    __m256i x = _mm256_set1_epi64x((long long)ld64(p[r] + 8 * k));
                    b[r][0] = _mm256_add_epi8(b[r][0], pc8(_mm256_xor_si256(x, w0), lut, nib));
                    b[r][1] = _mm256_add_epi8(b[r][1], pc8(_mm256_xor_si256(x, w1), lut, nib));
                }
                if (++since == 31) {
                    for (int r = 0; r < ROWS; r++) {
                        tot[r][0] = _mm256_add_epi64(tot[r][0], _mm256_sad_epu8(b[r][0], zero));
                        tot[r][1] = _mm256_add_epi64(tot[r][1], _mm256_sad_epu8(b[r][1], zero));
                        b[r][0] = b[r][1] = zero;
                    }
                    since = 0;
                }
            }
        }
        const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)valid),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        int64_t c0 = o0 + 8 * h;  /* the first channel of this half */
        for (int r = 0; r < ROWS && r < nr; r++) {
            __m256i c = counts32(_mm256_add_epi64(tot[r][0], _mm256_sad_epu8(b[r][0], zero)),
                                 _mm256_add_epi64(tot[r][1], _mm256_sad_epu8(b[r][1], zero)));
            __m256i t = _mm256_sub_epi32(_mm256_set1_epi32(krow[r]), _mm256_add_epi32(c, c));
            if (crow[r]) t = _mm256_sub_epi32(t, _mm256_loadu_si256((const __m256i *)(crow[r] + c0)));
            int64_t at = (m0 + r) * e->O + c0;
            if (e->mode == 0) {
                _mm256_maskstore_epi32((int *)e->out + at, keep, t);
            } else if (e->mode != 2) {
                __m256 x = _mm256_cvtepi32_ps(t);
                x = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(e->alpha + c0), x), _mm256_loadu_ps(e->bias + c0));
                if (e->scale) {
                    /* torch.relu: NaN and -0 kept */
                    if (e->relu) x = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NLT_UQ), x);
                    x = _mm256_add_ps(_mm256_mul_ps(x, _mm256_loadu_ps(e->scale + c0)), _mm256_loadu_ps(e->shift + c0));
                }
                if (e->res) x = _mm256_add_ps(x, _mm256_maskload_ps(e->res + at, keep));
                _mm256_maskstore_ps((float *)e->out + at, keep, x);
                if (e->mode == 3 && o0 / 8 + h < e->obytes) {
                    int neg = _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
                    px[r][o0 / 8 + h] = (uint8_t)(neg & _mm256_movemask_ps(_mm256_castsi256_ps(keep)));
                }
            } else if (o0 / 8 + h < e->obytes) {  /* lo <= t <= hi: neither lo > t nor t > hi */
                __m256i out = _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(e->lo + c0)), t),
                                              _mm256_cmpgt_epi32(t, _mm256_loadu_si256((const __m256i *)(e->hi + c0))));
                px[r][o0 / 8 + h] = (uint8_t)~_mm256_movemask_ps(_mm256_castsi256_ps(out));
            }
        }
    }
}
#elif RESTE_ISA == 3
#define ROWS 2
/* Byte counts (vcnt) summed into 64-bit lanes (pairwise widening adds) at least every 31 words. */
static void block_counts(const uint8_t *const *rows, int64_t nseg, int64_t L, const int64_t *off,
                         const uint64_t *Wb, uint64_t *cnt) {
    uint64x2_t tot[ROWS][8];
    for (int r = 0; r < ROWS; r++)
        for (int j = 0; j < 8; j++) tot[r][j] = vdupq_n_u64(0);
    for (int64_t s = 0; s < nseg; s++) {
        const uint8_t *p[ROWS];
        for (int r = 0; r < ROWS; r++) p[r] = rows[r] + off[s];
        const uint64_t *w = Wb + s * L * LANES;
        for (int64_t k = 0; k < L;) {
            int64_t end = k + 31 < L ? k + 31 : L;
            uint8x16_t b[ROWS][8];
            for (int r = 0; r < ROWS; r++)
                for (int j = 0; j < 8; j++) b[r][j] = vdupq_n_u8(0);
            for (; k < end; k++) {
                uint64x2_t wv[8];
                for (int j = 0; j < 8; j++) wv[j] = vld1q_u64(w + k * LANES + 2 * j);
                for (int r = 0; r < ROWS; r++) {
                    uint64x2_t x = vdupq_n_u64(ld64(p[r] + 8 * k));
                    for (int j = 0; j < 8; j++)
                        b[r][j] = vaddq_u8(b[r][j], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(x, wv[j]))));
                }
            }
            for (int r = 0; r < ROWS; r++)
                for (int j = 0; j < 8; j++)
                    tot[r][j] = vaddq_u64(tot[r][j], vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(b[r][j]))));
        }
    }
    for (int r = 0; r < ROWS; r++)
        for (int j = 0; j < 8; j++) vst1q_u64(cnt + r * LANES + 2 * j, tot[r][j]);
}
#else
#define ROWS 1
static void block_counts(const uint8_t *const *rows, int64_t nseg, int64_t L, const int64_t *off,
                         const uint64_t *Wb, uint64_t *cnt) {
    uint64_t c[LANES] = {0};
    for (int64_t s = 0; s < nseg; s++) {
        const uint8_t *p = rows[0] + off[s];
        const uint64_t *w = Wb + s * L * LANES;
        for (int64_t k = 0; k < L; k++) {
            uint64_t a = ld64(p + 8 * k);
            for (int j = 0; j < LANES; j++) c[j] += (uint64_t)__builtin_popcountll(a ^ w[k * LANES + j]);
        }
    }
    for (int j = 0; j < LANES; j++) cnt[j] = c[j];
}
#endif

/* How many output rows a block computes at a time (the threads split work on whole blocks). */
int reste_rows(void) { return ROWS; }

/* t[j] = K - 2 c[j] - cr[j] (cr may be NULL) and v[j] = alpha[j] t[j] + bias[j] [-> ReLU -> * scale[j] + shift[j]]
   (the ReLU where relu is not 0) on one block of 16 lanes: the same float32 operations, in the same order, in
   every variant (AVX-512 and AVX2: in emit16 and block_emit). */
#if !RESTE_BLOCK_EMIT
static inline uint32_t lanes_bits(const int32_t *t, const int32_t *lo, const int32_t *hi) {
    uint32_t bits = 0;
    for (int j = 0; j < LANES; j++) bits |= (uint32_t)(t[j] >= lo[j] && t[j] <= hi[j]) << j;
    return bits;
}
static inline void lanes_dot(const uint64_t *c, int32_t K, const int32_t *cr, int32_t *t) {
    for (int j = 0; j < LANES; j++) t[j] = K - 2 * (int32_t)c[j] - (cr ? cr[j] : 0);
}
static inline void lanes_float(const int32_t *t, const float *alpha, const float *bias, const float *scale,
                               const float *shift, int32_t relu, float *v) {
    for (int j = 0; j < LANES; j++) v[j] = alpha[j] * (float)t[j] + bias[j];
    if (scale && relu)
        for (int j = 0; j < LANES; j++) v[j] = (v[j] < 0.0f ? 0.0f : v[j]) * scale[j] + shift[j];  /* as torch.relu */
    else if (scale)
        for (int j = 0; j < LANES; j++) v[j] = v[j] * scale[j] + shift[j];
}
#endif

/* Binary convolution (or GEMM) on packed bits, output rows m0 .. m1-1 (m = (n * OH + oh) * OW + ow).
   Row m reads X + n * sn + oh * sh + ow * sw (bytes), nseg segments of L words at off[s] from there
   (implicit GEMM on a padded activation, or one segment of an im2col row). tail: the bits of each
   segment's last word that lie past the window (a kernel row of narrow pixels read in place, see
   kernels.py: Rows), 0 when none; the weights are 0 there, so popcount(a ^ w) counts the activation's bits
   there in every lane, and they are subtracted (K + 2 e in the row's dot products, e their popcount; the
   AVX-512 VPOPCNTDQ variant masks them off in its XOR instead).
   Bt: (ceil(O / 16), nseg * L, 16) words. t[m, o] = K - 2 popcount - corr[m % (OH * OW), o] (corr may be
   NULL) is the exact +-1 dot product, and the output is (corr, alpha, bias, scale, shift, lo and hi are
   padded to whole blocks of 16 channels: (P, 16 ceil(O / 16)) and 16 ceil(O / 16); lo > hi on the padding)
     mode 0: t as int32 (M, O);
     mode 1: float32 (M, O), alpha[o] t + bias[o] [-> ReLU -> * scale[o] + shift[o]] (scale NULL: none; the
             ReLU only where relu is not 0: a batch norm straight after the conv) [+ res[m, o]] (res NULL:
             none; a residual added in the same pass);
     mode 2: sign bits of the next layer's packed input: bit o of out + n * on + oh * ohs + ow * ows
             is lo[o] <= t <= hi[o]; the first obytes bytes of that pixel are written;
     mode 3: mode 1's float output, and its sign bits (value < 0, as reste_pack_signs: not -0, not NaN)
             written as mode 2 writes them but into bits (a layer whose output, after its residual add,
             feeds another binary layer and something else: no second pass to pack it). */
void reste_bconv(const uint8_t *X, int64_t sn, int64_t sh, int64_t sw, int64_t OH, int64_t OW,
                 int64_t nseg, int64_t L, const int64_t *off, uint64_t tail, const uint64_t *Bt, int64_t O, int32_t K,
                 const int32_t *corr, int32_t mode, const float *alpha, const float *bias, const float *scale,
                 const float *shift, int32_t relu, const float *res, const int32_t *lo, const int32_t *hi, uint8_t *out,
                 uint8_t *bits, int64_t on, int64_t ohs, int64_t ows, int64_t obytes, int64_t m0, int64_t m1) {
    int64_t P = OH * OW, blocks = (O + LANES - 1) / LANES, Kw = nseg * L;
#if RESTE_BLOCK_EMIT
    emit_ctx e = {mode, relu, O, obytes, alpha, bias, scale, shift, res, lo, hi, out, tail};
#else
    uint64_t cnt[ROWS * LANES];
#endif
    /* (n, oh, ow) of the first row: divided out once (not per block), then stepped row by row */
    int64_t n = m0 / P, p = m0 % P, oh = p / OW, ow = p % OW;
    for (int64_t r0 = m0; r0 < m1; r0 += ROWS) {
        int64_t nr = m1 - r0 < ROWS ? m1 - r0 : ROWS;
        const uint8_t *rows[ROWS];
        const int32_t *crow[ROWS];
        uint8_t *px[ROWS];
        int32_t krow[ROWS];
        /* a row past the end repeats the last one */
        for (int r = 0; r < ROWS; r++) {
            rows[r] = X + n * sn + oh * sh + ow * sw;
            crow[r] = corr ? corr + p * blocks * LANES : 0;
            uint8_t *dst = mode == 2 ? out : mode == 3 ? bits : 0;
            px[r] = dst ? dst + n * on + oh * ohs + ow * ows : 0;
            krow[r] = K;
            for (int64_t sg = 0; RESTE_ISA != 2 && tail && sg < nseg; sg++) {  /* (ISA 2 masks them instead) */
                krow[r] += 2 * __builtin_popcountll(ld64(rows[r] + off[sg] + 8 * (L - 1)) & tail);
            }
            if (r + 1 >= nr && nr < ROWS) continue;  /* (a whole block steps on past its last row: the next block) */
            p++;
            if (++ow == OW) {
                ow = 0;
                if (++oh == OH) {
                    oh = 0;
                    p = 0;
                    n++;
                }
            }
        }
        for (int64_t b = 0; b < blocks; b++) {
            int64_t o0 = b * LANES, no = O - o0 < LANES ? O - o0 : LANES;
#if RESTE_BLOCK_EMIT
            block_emit(rows, nseg, L, off, Bt + b * Kw * LANES, nr, r0, krow, crow, px, o0, no, &e);
#else
            block_counts(rows, nseg, L, off, Bt + b * Kw * LANES, cnt);
            for (int64_t r = 0; r < nr; r++) {
                /* whole 16-lane blocks (the per-channel arrays and corr rows are padded to whole blocks);
                   only no values are stored */
                int32_t t[LANES];
                float v[LANES];
                lanes_dot(cnt + r * LANES, krow[r], crow[r] ? crow[r] + o0 : 0, t);
                if (mode == 0) {
                    int32_t *y = (int32_t *)out + (r0 + r) * O + o0;
                    if (no == LANES) memcpy(y, t, sizeof t);  /* a fixed size: one vector store, not a call */
                    else memcpy(y, t, (size_t)no * sizeof(int32_t));
                } else if (mode != 2) {
                    lanes_float(t, alpha + o0, bias + o0, scale ? scale + o0 : 0, scale ? shift + o0 : 0, relu, v);
                    if (res) {
                        const float *rs = res + (r0 + r) * O + o0;
                        if (no == LANES)
                            for (int j = 0; j < LANES; j++) v[j] = v[j] + rs[j];
                        else
                            for (int64_t j = 0; j < no; j++) v[j] = v[j] + rs[j];
                    }
                    float *y = (float *)out + (r0 + r) * O + o0;
                    if (no == LANES) memcpy(y, v, sizeof v);
                    else memcpy(y, v, (size_t)no * sizeof(float));
                    if (mode == 3) {
                        uint32_t bits = 0;
                        for (int64_t j = 0; j < no; j++) bits |= (uint32_t)(v[j] < 0.0f) << j;
                        store_bits(px[r], o0, bits, obytes);
                    }
                } else {
                    uint32_t bits = lanes_bits(t, lo + o0, hi + o0);
                    px[r][o0 / 8] = (uint8_t)bits;
                    if (o0 / 8 + 1 < obytes) px[r][o0 / 8 + 1] = (uint8_t)(bits >> 8);
                }
            }
#endif
        }
    }
}

/* x: (R, C) float32: out = [ReLU](x) * scale[c] + shift[c] (ReLU as torch.relu: NaN stays NaN); out may be x
   (in place). Rows r0 .. r1-1. */
void reste_channel_affine(const float *x, float *out, int64_t C, const float *scale, const float *shift,
                          int32_t relu, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const float *v = x + r * C;
        float *y = out + r * C;
        if (relu)
            for (int64_t c = 0; c < C; c++) y[c] = (v[c] < 0.0f ? 0.0f : v[c]) * scale[c] + shift[c];
        else
            for (int64_t c = 0; c < C; c++) y[c] = v[c] * scale[c] + shift[c];
    }
}

/* ---- threads: each kernel above works on a range [lo, hi) of images or output rows; the _mt entry points
   split their range into `parts` pieces (multiples of `align`, the last one shorter) and run them in parallel,
   the first piece on the calling thread, so no Python thread pool sits in the hot path. Two pools:
     pool 1: the process's OpenMP runtime (PyTorch's libgomp), its entry points handed over once by
             reste_use_openmp: the same worker threads as torch's own float operations, so that the workers
             which spin after a torch operation pick up the next kernel's pieces instead of taking a core
             from them;
     pool 0 (and pool 1 before reste_use_openmp): POSIX threads started per call. A thread that cannot be
             started runs its piece on the calling thread instead.
   The result never depends on the pool or the number of pieces. */
#include <pthread.h>

#define MAX_PARTS 256
typedef void (*range_fn)(const void *ctx, int64_t lo, int64_t hi);
typedef struct {
    range_fn fn;
    const void *ctx;
    int64_t lo, hi;
} piece;

static void *run_piece(void *p) {
    const piece *q = (const piece *)p;
    q->fn(q->ctx, q->lo, q->hi);
    return 0;
}

typedef void (*omp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);  /* GOMP_parallel */
typedef int (*omp_int_fn)(void);
static omp_parallel_fn omp_parallel;
static omp_int_fn omp_thread_num, omp_num_threads;

/* The OpenMP runtime's GOMP_parallel, omp_get_thread_num and omp_get_num_threads (NULL: none). */
void reste_use_openmp(void *parallel, void *thread_num, void *num_threads) {
    omp_parallel = 0;
    omp_thread_num = (omp_int_fn)thread_num;
    omp_num_threads = (omp_int_fn)num_threads;
    if (parallel && thread_num && num_threads) omp_parallel = (omp_parallel_fn)parallel;
}

typedef struct {
    piece *pieces;
    int64_t n;
} team_job;

/* Each member of the team runs the pieces i = its number, + team size, ... (a team smaller than asked
   for, as in a nested region, still runs them all). */
static void team_body(void *p) {
    const team_job *job = (const team_job *)p;
    int64_t size = omp_num_threads(), i = omp_thread_num();
    if (size < 1) size = 1;
    for (; i < job->n; i += size) run_piece(&job->pieces[i]);
}

static void run_parallel(range_fn fn, const void *ctx, int64_t total, int64_t parts, int64_t align, int32_t pool) {
    if (align < 1) align = 1;
    if (parts > MAX_PARTS) parts = MAX_PARTS;
    int64_t step = parts > 1 ? (total + parts - 1) / parts : total;
    step = (step + align - 1) / align * align;
    if (parts <= 1 || step >= total) {
        fn(ctx, 0, total);
        return;
    }
    piece pieces[MAX_PARTS];
    pthread_t tids[MAX_PARTS];
    int started[MAX_PARTS];
    int64_t n = 0;
    for (int64_t lo = 0; lo < total && n < MAX_PARTS; lo += step, n++) {
        pieces[n].fn = fn;
        pieces[n].ctx = ctx;
        pieces[n].lo = lo;
        pieces[n].hi = lo + step < total ? lo + step : total;
    }
    if (pool == 1 && omp_parallel) {
        team_job job = {pieces, n};
        omp_parallel(team_body, &job, (unsigned)n, 0);
        return;
    }
    for (int64_t i = 1; i < n; i++) started[i] = pthread_create(&tids[i], 0, run_piece, &pieces[i]) == 0;
    run_piece(&pieces[0]);
    for (int64_t i = 1; i < n; i++) {
        if (started[i])
            pthread_join(tids[i], 0);
        else
            run_piece(&pieces[i]);
    }
}

typedef struct {
    const float *x;
    int64_t H, W, C;
    uint8_t *out;
    int64_t Hp, Wp, Cb, pt, pl;
} pack_ctx;

static void pack_range(const void *c, int64_t lo, int64_t hi) {
    const pack_ctx *a = (const pack_ctx *)c;
    reste_pack_signs(a->x, a->H, a->W, a->C, a->out, a->Hp, a->Wp, a->Cb, a->pt, a->pl, lo, hi);
}

void reste_pack_signs_mt(const float *x, int64_t H, int64_t W, int64_t C, uint8_t *out, int64_t Hp, int64_t Wp,
                         int64_t Cb, int64_t pt, int64_t pl, int64_t N, int64_t parts, int32_t pool) {
    pack_ctx a = {x, H, W, C, out, Hp, Wp, Cb, pt, pl};
    run_parallel(pack_range, &a, N, parts, 1, pool);
}

typedef struct {
    const uint8_t *xp;
    int64_t Hp, Wp, Cb, kh, kw, sh, sw, dh, dw, OH, OW;
    uint8_t *cols;
    int64_t row_bytes;
} im2col_ctx;

static void im2col_range(const void *c, int64_t lo, int64_t hi) {
    const im2col_ctx *a = (const im2col_ctx *)c;
    reste_im2col(a->xp, a->Hp, a->Wp, a->Cb, a->kh, a->kw, a->sh, a->sw, a->dh, a->dw, a->OH, a->OW, a->cols,
                 a->row_bytes, lo, hi);
}

void reste_im2col_mt(const uint8_t *xp, int64_t Hp, int64_t Wp, int64_t Cb, int64_t kh, int64_t kw, int64_t sh,
                     int64_t sw, int64_t dh, int64_t dw, int64_t OH, int64_t OW, uint8_t *cols, int64_t row_bytes,
                     int64_t N, int64_t parts, int32_t pool) {
    im2col_ctx a = {xp, Hp, Wp, Cb, kh, kw, sh, sw, dh, dw, OH, OW, cols, row_bytes};
    run_parallel(im2col_range, &a, N, parts, 1, pool);
}

typedef struct {
    const uint8_t *X;
    int64_t sn, sh, sw, OH, OW, nseg, L;
    const int64_t *off;
    uint64_t tail;
    const uint64_t *Bt;
    int64_t O;
    int32_t K;
    const int32_t *corr;
    int32_t mode;
    const float *alpha, *bias, *scale, *shift;
    int32_t relu;
    const float *res;
    const int32_t *lo, *hi;
    uint8_t *out, *bits;
    int64_t on, ohs, ows, obytes;
} bconv_ctx;

static void bconv_range(const void *c, int64_t m0, int64_t m1) {
    const bconv_ctx *a = (const bconv_ctx *)c;
    reste_bconv(a->X, a->sn, a->sh, a->sw, a->OH, a->OW, a->nseg, a->L, a->off, a->tail, a->Bt, a->O, a->K, a->corr,
                a->mode, a->alpha, a->bias, a->scale, a->shift, a->relu, a->res, a->lo, a->hi, a->out, a->bits, a->on,
                a->ohs, a->ows, a->obytes, m0, m1);
}

/* reste_bconv over output rows [0, M), in `parts` pieces of whole ROWS-row blocks. */
void reste_bconv_mt(const uint8_t *X, int64_t sn, int64_t sh, int64_t sw, int64_t OH, int64_t OW,
                    int64_t nseg, int64_t L, const int64_t *off, uint64_t tail, const uint64_t *Bt, int64_t O,
                    int32_t K, const int32_t *corr, int32_t mode, const float *alpha, const float *bias,
                    const float *scale, const float *shift, int32_t relu, const float *res, const int32_t *lo,
                    const int32_t *hi, uint8_t *out, uint8_t *bits, int64_t on, int64_t ohs, int64_t ows,
                    int64_t obytes, int64_t M, int64_t parts, int32_t pool) {
    bconv_ctx a = {X, sn, sh, sw, OH, OW, nseg, L, off, tail, Bt, O, K, corr, mode, alpha, bias, scale, shift, relu,
                   res, lo, hi, out, bits, on, ohs, ows, obytes};
    run_parallel(bconv_range, &a, M, parts, ROWS, pool);
}

/* The same with its arguments in one struct (kernels.py: BconvArgs, the same layout): a call of four arguments,
   where ctypes spends about 3 microseconds converting the 31 of reste_bconv_mt (a batch of one image feels it
   in every layer). */
void reste_bconv_args_mt(const bconv_ctx *a, int64_t M, int64_t parts, int32_t pool) {
    run_parallel(bconv_range, a, M, parts, ROWS, pool);
}

typedef struct {
    const float *x;
    float *out;
    int64_t C;
    const float *scale, *shift;
    int32_t relu;
} affine_ctx;

static void affine_range(const void *c, int64_t lo, int64_t hi) {
    const affine_ctx *a = (const affine_ctx *)c;
    reste_channel_affine(a->x, a->out, a->C, a->scale, a->shift, a->relu, lo, hi);
}

void reste_channel_affine_mt(const float *x, float *out, int64_t C, const float *scale, const float *shift,
                             int32_t relu, int64_t R, int64_t parts, int32_t pool) {
    affine_ctx a = {x, out, C, scale, shift, relu};
    run_parallel(affine_range, &a, R, parts, 1, pool);
}
