"""Binary convolution on packed bits: sign -> pack -> (im2col) -> XOR/popcount GEMM.

For +-1 vectors a and w of length K stored as bits (1 = -1),
``dot(a, w) = K - 2 * popcount(a XOR w)``. A binary convolution is such a GEMM
between the rows of an im2col matrix of the packed input signs and the packed
weight rows:

* layout: activations are NHWC; the sign bits of a pixel's C channels are packed
  into ``Cb = ceil(C / 8)`` bytes (little bit order). With fewer than 64 channels
  (``runtime.IMPLICIT_MIN_CHANNELS``) an im2col row is the ``kh * kw`` pixels of a
  window, ``kh * kw * Cb`` bytes, zero-filled to a multiple of 8 bytes and read as
  uint64 words; from 64 channels on, each pixel is zero-filled to whole words and
  the C kernel reads the windows in place (implicit GEMM: a row of kernel taps is
  ``kw`` contiguous pixels). Weights are packed the same way, so unused bits are 0
  in both operands and add nothing to the popcount.
* zero padding: the training model pads the *signed* input with 0, so a padded
  position adds nothing to the dot product. The packed input is padded with bit 0
  (= +1), which adds ``sum_c w[o, c, i, j]`` for every kernel position (i, j) that
  falls in the padding; ``padding_correction`` precomputes that sum per output
  position and channel (it depends on the position, not the image) and the GEMM
  subtracts it, so the result is exact.
* epilogue: ``y = alpha[o] * (K - 2 popcount - corr[p, o]) + b[o]``, optionally
  followed by ReLU and a per-channel affine (the conv -> ReLU -> BN of every
  binary block) and a residual add, in one pass. Or, where the output only feeds
  another binary conv, its sign bits straight into that conv's packed input: the
  sign of the float32 epilogue is a step function of the integer dot product, so
  ``sign_thresholds`` turns it into an integer interval per channel, found on the
  same float32 expression, and the bits are exactly those of the float path.

Two backends compute the same integers: ``"numpy"`` (portable; ``np.bitwise_count``)
and ``"c"``, compiled on first use by :mod:`reste.native` (the system C compiler,
cached under ``~/.cache/reste``) in one variant per instruction set: ``scalar``
(``popcnt`` per word), ``avx2`` (nibble-table popcount of bytes, summed per 64-bit
lane with SAD), ``avx512`` (``VPOPCNTDQ``: XOR, popcount and add cover 512 binary
multiply-accumulates) and ``neon`` on AArch64 (``vcnt``). Each variant is built
with explicit target flags (never ``-march=native``), and the one to run is picked
at load time from the CPU's features (``cpu_features``, ``__builtin_cpu_supports``),
so a cached build never runs on a CPU that lacks its instructions;
``$RESTE_PACKED_ISA`` (or ``isa=``) forces one (``choose_isa``). The kernels
compute 16 output channels side by side (one 64-bit lane per channel, weights
interleaved by ``CKernels.block_weights``) for 8 (AVX-512), 4 (AVX2), 2 (NEON) or
1 (scalar) output positions at a time, so no horizontal sums are needed. Every
variant gives the same integers, and the float epilogue is compiled with
``-ffp-contract=off``, so it rounds the same way in all of them. ``"auto"`` takes
``"c"`` when it builds and ``"numpy"`` otherwise. The C functions are called through
``ctypes``, which releases the GIL, so rows are split over threads
(``torch.get_num_threads()``).
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import UsageError
from ..native import NativeLibrary, parallel_for

BACKENDS = ("auto", "c", "numpy")

# ----------------------------------------------------------------------- weights


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean (R, ..., C) array (True = -1) along C into bytes (little bit order),
    flatten each row and zero-fill it to a multiple of 8 bytes: (R, W) uint64 words."""
    packed = np.packbits(bits, axis=-1, bitorder="little")
    rows = packed.reshape(packed.shape[0], -1)
    width = -(-rows.shape[1] // 8) * 8
    out = np.zeros((rows.shape[0], width), dtype=np.uint8)
    out[:, : rows.shape[1]] = rows
    return out.view(np.uint64)


def conv_weight_words(signs: np.ndarray, pixel_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Packed rows (O, W) uint64 of a +-1 conv weight (O, C, kh, kw), in (kh, kw, C) order, each
    pixel's ``ceil(C / 8)`` bytes zero-filled to ``pixel_bytes`` (the activation's layout), and
    ``S[o, i*kw + j] = sum_c w[o, c, i, j]`` (int32) for the padding correction."""
    neg = np.ascontiguousarray(signs.transpose(0, 2, 3, 1)) < 0
    s = signs.sum(axis=1, dtype=np.int32).reshape(signs.shape[0], -1)
    packed = np.packbits(neg, axis=-1, bitorder="little")
    if pixel_bytes is not None and pixel_bytes > packed.shape[-1]:
        packed = np.pad(packed, ((0, 0), (0, 0), (0, 0), (0, pixel_bytes - packed.shape[-1])))
    rows = packed.reshape(packed.shape[0], -1)
    width = -(-rows.shape[1] // 8) * 8
    out = np.zeros((rows.shape[0], width), dtype=np.uint8)
    out[:, : rows.shape[1]] = rows
    return out.view(np.uint64), np.ascontiguousarray(s)


def padding_correction(
    s: np.ndarray, kernel: tuple[int, int], in_hw: tuple[int, int], pad: tuple[int, int, int, int],
    stride: tuple[int, int], dil: tuple[int, int], out_hw: tuple[int, int],
) -> np.ndarray | None:
    """(OH*OW, O) int32: the sum of the weights that fall on zero padding at each output
    position (what packing the padding as +1 adds); ``None`` when no window reaches the padding."""
    (kh, kw), (h, w), (pt, _, pl, _), (sh, sw), (dh, dw), (oh, ow) = kernel, in_hw, pad, stride, dil, out_hw
    ih = np.arange(oh)[:, None] * sh - pt + np.arange(kh)[None, :] * dh
    iw = np.arange(ow)[:, None] * sw - pl + np.arange(kw)[None, :] * dw
    vh = (ih >= 0) & (ih < h)
    vw = (iw >= 0) & (iw < w)
    padded = ~(vh[:, None, :, None] & vw[None, :, None, :])  # (oh, ow, kh, kw)
    if not padded.any():
        return None
    return np.ascontiguousarray(padded.reshape(oh * ow, kh * kw).astype(np.int32) @ s.T)


# ------------------------------------------------------------------ numpy backend


_BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _bitcount(words: np.ndarray, out: np.ndarray) -> None:
    """out = popcount(words) (uint64 -> uint8); a byte table where NumPy < 2 lacks bitwise_count."""
    if hasattr(np, "bitwise_count"):
        np.bitwise_count(words, out=out)
    else:
        np.sum(_BYTE_COUNTS[words.view(np.uint8)].reshape(*words.shape, 8), axis=-1, dtype=np.uint8, out=out)


class NumpyKernels:
    """The reference backend: NumPy only."""

    name = "numpy"

    def pack_signs(self, x: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
        """(N, H, W, C) float -> (N, H+pt+pb, W+pl+pr, Cb) uint8 sign bits, zero (= +1) padding."""
        pt, pb, pl, pr = pad
        packed = np.packbits(x < 0, axis=-1, bitorder="little")
        if pt or pb or pl or pr:
            packed = np.pad(packed, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        return packed

    def im2col(self, xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dil: tuple[int, int],
               out_hw: tuple[int, int], row_bytes: int) -> np.ndarray:
        n, _, _, cb = xp.shape
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dil, out_hw
        unit = next(u for u in (8, 4, 2, 1) if cb % u == 0)
        dt = np.dtype(f"<u{unit}")
        src = np.ascontiguousarray(xp).view(dt)
        s0, s1, s2, s3 = src.strides
        windows = np.lib.stride_tricks.as_strided(
            src, (n, oh, ow, kh, kw, cb // unit), (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3), writeable=False)
        cols = np.zeros((n, oh, ow, row_bytes), dtype=np.uint8)
        c0, c1, c2, _ = cols.strides
        dst = np.lib.stride_tricks.as_strided(cols.view(dt), (n, oh, ow, kh, kw, cb // unit),
                                              (c0, c1, c2, kw * cb, cb, unit))
        np.copyto(dst, windows)
        return cols.reshape(n * oh * ow, row_bytes)

    def gemm(self, a: np.ndarray, b: np.ndarray, k: int, corr: np.ndarray | None, alpha: np.ndarray,
             bias: np.ndarray, post: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """(M, O) float32 = epilogue of K - 2 popcount(a[m] ^ b[o]) - corr[m % P, o]."""
        m, words = a.shape
        o = b.shape[0]
        out = np.empty((m, o), dtype=np.float32)
        at = np.ascontiguousarray(a.T)
        bt = np.ascontiguousarray(b.T)
        p = corr.shape[0] if corr is not None else 1
        chunk = max(1, 4096 // p) * p if corr is not None else 2048
        acc_t = np.uint16 if 64 * words < 65536 else np.uint32
        buf = np.empty((min(chunk, m), o), dtype=np.uint64)
        cnt = np.empty((min(chunk, m), o), dtype=np.uint8)
        acc = np.empty((min(chunk, m), o), dtype=acc_t)
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            r = e - s
            acc[:r] = 0
            for w in range(words):
                np.bitwise_xor(at[w, s:e, None], bt[w, None, :], out=buf[:r])
                _bitcount(buf[:r], cnt[:r])
                np.add(acc[:r], cnt[:r], out=acc[:r])
            v = k - 2 * acc[:r].astype(np.int32)
            if corr is not None:
                v = (v.reshape(-1, p, o) - corr[None]).reshape(r, o)
            y = v.astype(np.float32) * alpha + bias
            if post is not None:
                y = np.maximum(y, 0.0) * post[0] + post[1]
            out[s:e] = y
        return out


# ---------------------------------------------------------------------- C backend

# One source, compiled once per instruction set (``-DRESTE_ISA=...`` plus that set's target flags):
# 0 scalar (``popcnt`` per word), 1 AVX2 (nibble-table popcount of bytes, summed per 64-bit lane with
# SAD), 2 AVX-512 with VPOPCNTDQ, 3 NEON (``vcnt`` of bytes). Every variant computes the same integers;
# the float epilogue is compiled with ``-ffp-contract=off`` so that it rounds the same way everywhere.
_C_SOURCE = r"""
#include <stdint.h>
#include <string.h>

#ifndef RESTE_ISA
#define RESTE_ISA 0
#endif
#if RESTE_ISA == 1 || RESTE_ISA == 2
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
#if RESTE_ISA == 2
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

#if RESTE_ISA == 2
#define ROWS 8
static void block_counts(const uint8_t *const *rows, int64_t nseg, int64_t L, const int64_t *off,
                         const uint64_t *Wb, uint64_t *cnt) {
    __m512i acc[ROWS][2];
    for (int r = 0; r < ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int64_t s = 0; s < nseg; s++) {
        const uint64_t *p[ROWS];
        for (int r = 0; r < ROWS; r++) p[r] = (const uint64_t *)(rows[r] + off[s]);
        const uint64_t *w = Wb + s * L * LANES;
        for (int64_t k = 0; k < L; k++) {
            __m512i w0 = _mm512_loadu_si512((const void *)(w + k * LANES));
            __m512i w1 = _mm512_loadu_si512((const void *)(w + k * LANES + 8));
#pragma GCC unroll 8
            for (int r = 0; r < ROWS; r++) {
                __m512i x = _mm512_set1_epi64((long long)p[r][k]);
                acc[r][0] = _mm512_add_epi64(acc[r][0], _mm512_popcnt_epi64(_mm512_xor_si512(x, w0)));
                acc[r][1] = _mm512_add_epi64(acc[r][1], _mm512_popcnt_epi64(_mm512_xor_si512(x, w1)));
            }
        }
    }
    for (int r = 0; r < ROWS; r++) {
        _mm512_storeu_si512((void *)(cnt + r * LANES), acc[r][0]);
        _mm512_storeu_si512((void *)(cnt + r * LANES + 8), acc[r][1]);
    }
}
#elif RESTE_ISA == 1
#define ROWS 4
static inline __m256i pc8(__m256i x, __m256i lut, __m256i nib) {  /* popcount of each byte */
    __m256i lo = _mm256_and_si256(x, nib);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}
/* Two passes of 8 lanes; byte counters summed into 64-bit lanes (SAD) at least every 31 words, so that
   they cannot overflow (8 per word). */
static void block_counts(const uint8_t *const *rows, int64_t nseg, int64_t L, const int64_t *off,
                         const uint64_t *Wb, uint64_t *cnt) {
    const __m256i lut = _mm256_setr_epi8(0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4,0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4);
    const __m256i nib = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        __m256i tot[ROWS][2];
        for (int r = 0; r < ROWS; r++) tot[r][0] = tot[r][1] = zero;
        for (int64_t s = 0; s < nseg; s++) {
            const uint64_t *p[ROWS];
            for (int r = 0; r < ROWS; r++) p[r] = (const uint64_t *)(rows[r] + off[s]);
            const uint64_t *w = Wb + s * L * LANES + 8 * h;
            for (int64_t k = 0; k < L;) {
                int64_t end = k + 31 < L ? k + 31 : L;
                __m256i b[ROWS][2];
                for (int r = 0; r < ROWS; r++) b[r][0] = b[r][1] = zero;
                for (; k < end; k++) {
                    __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k * LANES));
                    __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k * LANES + 4));
#pragma GCC unroll 4
                    for (int r = 0; r < ROWS; r++) {
                        __m256i x = _mm256_set1_epi64x((long long)p[r][k]);
                        b[r][0] = _mm256_add_epi8(b[r][0], pc8(_mm256_xor_si256(x, w0), lut, nib));
                        b[r][1] = _mm256_add_epi8(b[r][1], pc8(_mm256_xor_si256(x, w1), lut, nib));
                    }
                }
                for (int r = 0; r < ROWS; r++) {
                    tot[r][0] = _mm256_add_epi64(tot[r][0], _mm256_sad_epu8(b[r][0], zero));
                    tot[r][1] = _mm256_add_epi64(tot[r][1], _mm256_sad_epu8(b[r][1], zero));
                }
            }
        }
        for (int r = 0; r < ROWS; r++) {
            _mm256_storeu_si256((__m256i *)(cnt + r * LANES + 8 * h), tot[r][0]);
            _mm256_storeu_si256((__m256i *)(cnt + r * LANES + 8 * h + 4), tot[r][1]);
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
        const uint64_t *p[ROWS];
        for (int r = 0; r < ROWS; r++) p[r] = (const uint64_t *)(rows[r] + off[s]);
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
                    uint64x2_t x = vdupq_n_u64(p[r][k]);
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
        const uint64_t *p = (const uint64_t *)(rows[0] + off[s]);
        const uint64_t *w = Wb + s * L * LANES;
        for (int64_t k = 0; k < L; k++) {
            uint64_t a = p[k];
            for (int j = 0; j < LANES; j++) c[j] += (uint64_t)__builtin_popcountll(a ^ w[k * LANES + j]);
        }
    }
    for (int j = 0; j < LANES; j++) cnt[j] = c[j];
}
#endif

/* t[j] = K - 2 c[j] - cr[j] (cr may be NULL) and v[j] = alpha[j] t[j] + bias[j] [-> ReLU -> * scale[j] + shift[j]]
   on one block of 16 lanes: the same float32 operations, in the same order, in every variant. */
#if RESTE_ISA == 2
static inline void lanes_dot(const uint64_t *c, int32_t K, const int32_t *cr, int32_t *t) {
    __m256i lo = _mm512_cvtepi64_epi32(_mm512_loadu_si512((const void *)c));
    __m256i hi = _mm512_cvtepi64_epi32(_mm512_loadu_si512((const void *)(c + 8)));
    __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    x = _mm512_sub_epi32(_mm512_set1_epi32(K), _mm512_add_epi32(x, x));
    if (cr) x = _mm512_sub_epi32(x, _mm512_loadu_si512((const void *)cr));
    _mm512_storeu_si512((void *)t, x);
}
static inline void lanes_float(const int32_t *t, const float *alpha, const float *bias, const float *scale,
                               const float *shift, float *v) {
    __m512 x = _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)t));
    x = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(alpha), x), _mm512_loadu_ps(bias));
    if (scale) {
        x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), x);
        x = _mm512_add_ps(_mm512_mul_ps(x, _mm512_loadu_ps(scale)), _mm512_loadu_ps(shift));
    }
    _mm512_storeu_ps(v, x);
}
static inline uint32_t lanes_bits(const int32_t *t, const int32_t *lo, const int32_t *hi) {
    __m512i x = _mm512_loadu_si512((const void *)t);
    return (uint32_t)(_mm512_cmp_epi32_mask(x, _mm512_loadu_si512((const void *)lo), _MM_CMPINT_NLT) &
                      _mm512_cmp_epi32_mask(x, _mm512_loadu_si512((const void *)hi), _MM_CMPINT_LE));
}
#else
static inline uint32_t lanes_bits(const int32_t *t, const int32_t *lo, const int32_t *hi) {
    uint32_t bits = 0;
    for (int j = 0; j < LANES; j++) bits |= (uint32_t)(t[j] >= lo[j] && t[j] <= hi[j]) << j;
    return bits;
}
#endif
#if RESTE_ISA == 2
#elif RESTE_ISA == 1
static inline void lanes_dot(const uint64_t *c, int32_t K, const int32_t *cr, int32_t *t) {
    for (int j = 0; j < LANES; j++) t[j] = K - 2 * (int32_t)c[j] - (cr ? cr[j] : 0);
}
static inline void lanes_float(const int32_t *t, const float *alpha, const float *bias, const float *scale,
                               const float *shift, float *v) {
    for (int h = 0; h < LANES; h += 8) {
        __m256 x = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(t + h)));
        x = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(alpha + h), x), _mm256_loadu_ps(bias + h));
        if (scale) {
            x = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ), x);
            x = _mm256_add_ps(_mm256_mul_ps(x, _mm256_loadu_ps(scale + h)), _mm256_loadu_ps(shift + h));
        }
        _mm256_storeu_ps(v + h, x);
    }
}
#else
static inline void lanes_dot(const uint64_t *c, int32_t K, const int32_t *cr, int32_t *t) {
    for (int j = 0; j < LANES; j++) t[j] = K - 2 * (int32_t)c[j] - (cr ? cr[j] : 0);
}
static inline void lanes_float(const int32_t *t, const float *alpha, const float *bias, const float *scale,
                               const float *shift, float *v) {
    for (int j = 0; j < LANES; j++) v[j] = alpha[j] * (float)t[j] + bias[j];
    if (scale)
        for (int j = 0; j < LANES; j++) v[j] = (v[j] > 0.0f ? v[j] : 0.0f) * scale[j] + shift[j];
}
#endif

/* Binary convolution (or GEMM) on packed bits, output rows m0 .. m1-1 (m = (n * OH + oh) * OW + ow).
   Row m reads X + n * sn + oh * sh + ow * sw (bytes), nseg segments of L words at off[s] from there
   (implicit GEMM on a padded, word-aligned activation, or one segment of an im2col row).
   Bt: (ceil(O / 16), nseg * L, 16) words. t[m, o] = K - 2 popcount - corr[m % (OH * OW), o] (corr may be
   NULL) is the exact +-1 dot product, and the output is (corr, alpha, bias, scale, shift, lo and hi are
   padded to whole blocks of 16 channels: (P, 16 ceil(O / 16)) and 16 ceil(O / 16); lo > hi on the padding)
     mode 0: t as int32 (M, O);
     mode 1: float32 (M, O), alpha[o] t + bias[o] [-> ReLU -> * scale[o] + shift[o]] (scale NULL: none)
             [+ res[m, o]] (res NULL: none; a residual added in the same pass);
     mode 2: sign bits of the next layer's packed input: bit o of out + n * on + oh * ohs + ow * ows
             is lo[o] <= t <= hi[o]; the first obytes bytes of that pixel are written. */
void reste_bconv(const uint8_t *X, int64_t sn, int64_t sh, int64_t sw, int64_t OH, int64_t OW,
                 int64_t nseg, int64_t L, const int64_t *off, const uint64_t *Bt, int64_t O, int32_t K,
                 const int32_t *corr, int32_t mode, const float *alpha, const float *bias, const float *scale,
                 const float *shift, const float *res, const int32_t *lo, const int32_t *hi, uint8_t *out,
                 int64_t on, int64_t ohs, int64_t ows, int64_t obytes, int64_t m0, int64_t m1) {
    int64_t P = OH * OW, blocks = (O + LANES - 1) / LANES, Kw = nseg * L;
    uint64_t cnt[ROWS * LANES];
    for (int64_t r0 = m0; r0 < m1; r0 += ROWS) {
        int64_t nr = m1 - r0 < ROWS ? m1 - r0 : ROWS;
        const uint8_t *rows[ROWS];
        const int32_t *crow[ROWS];
        uint8_t *px[ROWS];
        for (int r = 0; r < ROWS; r++) {
            int64_t m = r0 + (r < nr ? r : nr - 1), n = m / P, p = m % P, oh = p / OW, ow = p % OW;
            rows[r] = X + n * sn + oh * sh + ow * sw;
            crow[r] = corr ? corr + p * blocks * LANES : 0;
            px[r] = mode == 2 ? out + n * on + oh * ohs + ow * ows : 0;
        }
        for (int64_t b = 0; b < blocks; b++) {
            int64_t o0 = b * LANES, no = O - o0 < LANES ? O - o0 : LANES;
            block_counts(rows, nseg, L, off, Bt + b * Kw * LANES, cnt);
            for (int64_t r = 0; r < nr; r++) {
                /* whole 16-lane blocks (the per-channel arrays and corr rows are padded to whole blocks);
                   only no values are stored */
                int32_t t[LANES];
                float v[LANES];
                lanes_dot(cnt + r * LANES, K, crow[r] ? crow[r] + o0 : 0, t);
                if (mode == 0) {
                    int32_t *y = (int32_t *)out + (r0 + r) * O + o0;
                    if (no == LANES) memcpy(y, t, sizeof t);  /* a fixed size: one vector store, not a call */
                    else memcpy(y, t, (size_t)no * sizeof(int32_t));
                } else if (mode == 1) {
                    lanes_float(t, alpha + o0, bias + o0, scale ? scale + o0 : 0, scale ? shift + o0 : 0, v);
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
                } else {
                    uint32_t bits = lanes_bits(t, lo + o0, hi + o0);
                    px[r][o0 / 8] = (uint8_t)bits;
                    if (o0 / 8 + 1 < obytes) px[r][o0 / 8 + 1] = (uint8_t)(bits >> 8);
                }
            }
        }
    }
}

/* x: (R, C) float32 in place: x = [ReLU](x) * scale[c] + shift[c] (ReLU as torch.relu: NaN stays NaN).
   Rows r0 .. r1-1. */
void reste_channel_affine(float *x, int64_t C, const float *scale, const float *shift, int32_t relu,
                          int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        float *y = x + r * C;
        if (relu)
            for (int64_t c = 0; c < C; c++) y[c] = (y[c] < 0.0f ? 0.0f : y[c]) * scale[c] + shift[c];
        else
            for (int64_t c = 0; c < C; c++) y[c] = y[c] * scale[c] + shift[c];
    }
}
"""

_CPU_SOURCE = r"""
/* The instruction sets this CPU (and its operating system) can run: bit 0 popcnt, 1 AVX2,
   2 AVX-512 F/BW/VL with VPOPCNTDQ, 3 NEON. */
int reste_cpu_features(void) {
#if defined(__x86_64__) || defined(__i386__)
    int f = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("popcnt")) f |= 1;
    if (__builtin_cpu_supports("avx2")) f |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq")) f |= 4;
    return f;
#elif defined(__aarch64__)
    return 8;  /* Advanced SIMD is part of every AArch64 CPU */
#else
    return 0;
#endif
}
"""

#: Kernel variants, fastest first; ``RESTE_PACKED_ISA`` forces one.
ISAS = ("avx512", "avx2", "neon", "scalar")
ISA_ENV = "RESTE_PACKED_ISA"
_ISA_ID = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3}
_ISA_FEATURE = {"avx2": 2, "avx512": 4, "neon": 8}
_ISA_FLAGS = {
    "scalar": (),
    "avx2": ("-mpopcnt", "-mavx2"),
    "avx512": ("-mpopcnt", "-mavx2", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vpopcntdq"),
    "neon": (),
}

_P = ctypes.c_void_p
_I = ctypes.c_int64
_I32 = ctypes.c_int32

_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "reste_isa": ([], ctypes.c_int),
    "reste_pack_signs": ([_P, _I, _I, _I, _P, _I, _I, _I, _I, _I, _I, _I], None),
    "reste_im2col": ([_P] + [_I] * 11 + [_P, _I, _I, _I], None),
    "reste_bconv": ([_P, _I, _I, _I, _I, _I, _I, _I, _P, _P, _I, _I32, _P, _I32, _P, _P, _P, _P, _P, _P, _P,
                     _P, _I, _I, _I, _I, _I, _I], None),
    "reste_channel_affine": ([_P, _I, _P, _P, _I32, _I, _I], None),
}
_CPU = NativeLibrary("cpu", _CPU_SOURCE, {"reste_cpu_features": ([], ctypes.c_int)}, flag_sets=(("-O2",),))


def cpu_features() -> int:
    """The feature bits of :data:`_CPU_SOURCE` for this CPU (0 when the probe does not build)."""
    lib = _CPU.get()
    return int(lib.reste_cpu_features()) if lib is not None else 0


def _base_flags(features: int) -> tuple[str, ...]:
    popcnt = ("-mpopcnt",) if features & 1 and platform.machine().lower() in ("x86_64", "amd64", "i686") else ()
    return ("-O3", "-ffp-contract=off", *popcnt)


def _variant(isa: str) -> NativeLibrary:
    lib = _VARIANTS.get(isa)
    if lib is None:
        flags = (*_base_flags(cpu_features()), *_ISA_FLAGS[isa], f"-DRESTE_ISA={_ISA_ID[isa]}")
        lib = _VARIANTS.setdefault(isa, NativeLibrary(f"packed_{isa}", _C_SOURCE, _SIGNATURES, flag_sets=(flags,)))
    return lib


_VARIANTS: dict[str, NativeLibrary] = {}
# the portable build: what decides whether the C backend exists at all
_LIB = NativeLibrary("packed", _C_SOURCE, _SIGNATURES, flag_sets=(("-O3", "-ffp-contract=off"),))


def supported_isas() -> list[str]:
    """The kernel variants this CPU can run, fastest first (``"scalar"`` always)."""
    features = cpu_features()
    return [isa for isa in ISAS if isa == "scalar" or features & _ISA_FEATURE[isa]]


def available_isas() -> list[str]:
    """The variants this CPU runs and this compiler builds, fastest first (empty without a C compiler)."""
    if _LIB.get() is None:
        return []
    return [isa for isa in supported_isas() if _variant(isa).get() is not None]


def choose_isa(isa: str | None = None) -> str:
    """The variant to run: ``isa`` or ``$RESTE_PACKED_ISA`` when set (a ``UsageError`` when the CPU or the
    compiler cannot run it), else the fastest available one."""
    want = (isa or os.environ.get(ISA_ENV) or "auto").lower()
    if want not in ("auto", *ISAS):
        raise UsageError(f"unknown packed kernel variant {want!r} ({ISA_ENV}); valid: auto, {', '.join(ISAS)}")
    if want == "auto":  # (the portable build, which get_kernels checked, when no variant builds)
        return next((isa for isa in supported_isas() if _variant(isa).get() is not None), "scalar")
    if want not in supported_isas():
        raise UsageError(f"this CPU cannot run the {want} packed kernels ({ISA_ENV}); it supports "
                         f"{', '.join(supported_isas())}")
    if _variant(want).get() is None:
        raise UsageError(f"the {want} packed kernels do not build here ({_variant(want).error()})")
    return want


def pad_lanes(a: np.ndarray | None, fill: float = 0) -> np.ndarray | None:
    """``a`` with its last axis padded with ``fill`` to a multiple of 16 (the kernels' lanes), contiguous."""
    if a is None:
        return None
    extra = -a.shape[-1] % 16
    if extra:
        a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, extra)], constant_values=fill)
    return np.ascontiguousarray(a)


@dataclass
class Rows:
    """How ``reste_bconv`` finds the activation row of output position m = (n, oh, ow), for n below
    ``images``: from ``base + n * sn + oh * sh + ow * sw`` (bytes), ``len(off)`` segments of ``words``
    words at ``off``."""

    images: int
    sn: int
    sh: int
    sw: int
    out_hw: tuple[int, int]
    off: np.ndarray
    words: int


class CKernels:
    """The compiled backend (same results as :class:`NumpyKernels`), one instruction-set variant."""

    name = "c"

    def __init__(self, lib: ctypes.CDLL, threads: int, isa: str = "scalar") -> None:
        self.lib = lib
        self.threads = max(1, threads)
        self.isa = isa
        self.rows_per_block = {"avx512": 8, "avx2": 4, "neon": 2}.get(isa, 1)

    def _split(self, total: int, work: int, fn: Callable[[int, int], Any], align: int = 1) -> None:
        """Run fn(lo, hi) over [0, total) in up to ``threads`` pieces when the work is large enough."""
        parallel_for(total, fn, self.threads, work=work, align=align)

    def pack_signs(self, x: np.ndarray, pad: tuple[int, int, int, int], pixel_bytes: int | None = None) -> np.ndarray:
        """(N, H, W, C) float -> (N, H+pt+pb, W+pl+pr, pixel_bytes) uint8 sign bits (default ceil(C / 8)
        bytes), zero (= +1) padding and zero spare bytes."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, h, w, c = x.shape
        pt, pb, pl, pr = pad
        cb = pixel_bytes or -(-c // 8)
        hp, wp = h + pt + pb, w + pl + pr
        spare = pt or pb or pl or pr or cb * 8 > -(-c // 8) * 8
        out = (np.zeros if spare else np.empty)((n, hp, wp, cb), dtype=np.uint8)
        xa, oa = x.ctypes.data, out.ctypes.data
        self._split(n, x.size, lambda lo, hi: self.lib.reste_pack_signs(xa, h, w, c, oa, hp, wp, cb, pt, pl, lo, hi))
        return out

    def im2col(self, xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dil: tuple[int, int],
               out_hw: tuple[int, int], row_bytes: int) -> np.ndarray:
        xp = np.ascontiguousarray(xp)
        n, hp, wp, cb = xp.shape
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dil, out_hw
        cols = np.empty((n * oh * ow, row_bytes), dtype=np.uint8)
        xa, ca = xp.ctypes.data, cols.ctypes.data
        self._split(n, cols.size, lambda lo, hi: self.lib.reste_im2col(
            xa, hp, wp, cb, kh, kw, sh, sw, dh, dw, oh, ow, ca, row_bytes, lo, hi))
        return cols

    def channel_affine(self, x: np.ndarray, scale: np.ndarray, shift: np.ndarray, relu: bool) -> None:
        """In place on a C-contiguous (..., C) float32 array: ``[relu](x) * scale + shift`` per channel."""
        assert x.dtype == np.float32 and x.flags.c_contiguous and scale.dtype == shift.dtype == np.float32
        c = x.shape[-1]
        rows = x.size // c
        keep = (scale, shift)  # noqa: F841
        xa, sa, ta = x.ctypes.data, scale.ctypes.data, shift.ctypes.data
        self._split(rows, x.size, lambda lo, hi: self.lib.reste_channel_affine(xa, c, sa, ta, int(relu), lo, hi))

    @staticmethod
    def block_weights(words: np.ndarray) -> np.ndarray:
        """(O, W) weight rows -> (ceil(O / 16), W, 16): 16 output channels side by side per word
        (the lanes of the popcount kernels), zero rows for the padding channels."""
        o, w = words.shape
        blocks = -(-o // 16)
        padded = np.zeros((blocks * 16, w), dtype=np.uint64)
        padded[:o] = words
        return np.ascontiguousarray(padded.reshape(blocks, 16, w).transpose(0, 2, 1))

    def bconv(self, x: np.ndarray, rows: Rows, bt: np.ndarray, o: int, k: int, corr: np.ndarray | None,
              epilogue: "Epilogue", bits: "BitsOut | None" = None, residual: np.ndarray | None = None) -> np.ndarray:
        """XOR/popcount convolution of the packed activation ``x`` (addressed by ``rows``) with the
        blocked weights ``bt``: int32 dot products (``epilogue=None``), float32 (M, O) through the
        epilogue (plus ``residual``, (M, O) float32, when given), or, with ``bits``, the sign bits
        written into ``bits.out`` (returned)."""
        oh, ow = rows.out_hw
        m = rows.images * oh * ow
        assert bt.shape[1] == len(rows.off) * rows.words and bt.shape[0] * 16 >= o
        ptr = lambda arr: None if arr is None else arr.ctypes.data  # noqa: E731
        null = (None, None)
        if bits is not None:
            mode, out, ep = 2, bits.out, bits
            geometry = (ptr(bits.out) + bits.origin, *bits.strides, -(-o // 8))
            scale_shift, thresholds, ab = null, (ptr(bits.lo), ptr(bits.hi)), null
        else:
            mode = 0 if epilogue is None else 1
            out = np.empty((m, o), dtype=np.int32 if epilogue is None else np.float32)
            geometry = (ptr(out), 0, 0, 0, 0)
            ep = epilogue
            ab = null if epilogue is None else (ptr(epilogue.alpha), ptr(epilogue.bias))
            post = None if epilogue is None else epilogue.post
            scale_shift = (ptr(post[0]), ptr(post[1])) if post is not None else null
            thresholds = null
        if residual is not None:
            assert mode == 1 and residual.dtype == np.float32 and residual.size == m * o
            residual = np.ascontiguousarray(residual)
        lanes = bt.shape[0] * 16
        assert all(a is None or a.shape[-1] == lanes for a in (corr, *(ab_arrays(ep))))
        keep = (x, bt, corr, rows.off, ep, residual)  # noqa: F841 - keep the buffers alive during the call
        args = (ptr(x), rows.sn, rows.sh, rows.sw, oh, ow, len(rows.off), rows.words, ptr(rows.off), ptr(bt), o, k,
                ptr(corr), mode, *ab, *scale_shift, ptr(residual), *thresholds, *geometry)
        self._split(m, m * o * bt.shape[1], lambda lo, hi: self.lib.reste_bconv(*args, lo, hi),
                    align=self.rows_per_block)
        return out


@dataclass
class Epilogue:
    """``alpha * t + bias`` per output channel, then optionally ReLU and ``* scale + shift`` (``post``)."""

    alpha: np.ndarray
    bias: np.ndarray
    post: tuple[np.ndarray, np.ndarray] | None = None

    def padded(self) -> "Epilogue":
        """The same with every array padded to whole blocks of 16 channels (what the C kernels read)."""
        post = None if self.post is None else (pad_lanes(self.post[0]), pad_lanes(self.post[1]))
        return Epilogue(pad_lanes(self.alpha), pad_lanes(self.bias), post)


def ab_arrays(ep: Any) -> tuple[np.ndarray | None, ...]:
    """The per-channel arrays of an :class:`Epilogue` or :class:`BitsOut` (for checks)."""
    if ep is None:
        return ()
    if isinstance(ep, Epilogue):
        return (ep.alpha, ep.bias, *(ep.post or ()))
    return (ep.lo, ep.hi)


@dataclass
class BitsOut:
    """Where a fused layer writes its sign bits: ``out`` (N, Hp, Wp, Cb) uint8, the next layer's packed
    input, zero-filled; ``origin`` the byte offset of its interior, ``strides`` (n, h, w) in bytes; bit o
    is set where ``lo[o] <= t <= hi[o]``."""

    out: np.ndarray
    origin: int
    strides: tuple[int, int, int]
    lo: np.ndarray
    hi: np.ndarray


def sign_thresholds(k: int, epilogue: Epilogue) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer bounds (lo, hi) per channel with ``lo <= t <= hi`` exactly where the float32 epilogue of
    the dot product t (``|t| <= k``) is negative, i.e. where the next layer's sign is -1.

    The epilogue is a composition of float32 operations that are each monotone in t (a product
    with a constant, a sum, ReLU), so its sign is a step function of t; the step is found by
    bisection on the same float32 expression the kernels compute, so the bits are identical to
    computing the float and taking its sign. ``None`` when some channel is not a single step
    (cannot happen for finite parameters, and non-finite ones get ``None``; checked on every
    integer for safety when k is small).
    """
    alpha, bias = epilogue.alpha.astype(np.float32), epilogue.bias.astype(np.float32)
    post = epilogue.post
    if not all(np.isfinite(a).all() for a in (alpha, bias, *(post or ()))):
        return None  # inf * 0 makes NaNs: keep the float path

    def negative(t: np.ndarray) -> np.ndarray:
        y = alpha * t.astype(np.float32) + bias
        if post is not None:
            y = np.where(y > 0, y, np.float32(0)) * post[0] + post[1]
        return y < 0

    o = alpha.shape[0]
    first, last = negative(np.full(o, -k)), negative(np.full(o, k))
    lo = np.full(o, -k, dtype=np.int64)
    hi = np.full(o, k, dtype=np.int64)
    # bisection for the last t with the value of t = -k (a < b: negative(a) == first != negative(b))
    step = first != last
    a, b = np.full(o, -k, dtype=np.int64), np.full(o, k, dtype=np.int64)
    while bool(((b - a) > 1)[step].any()):
        mid = (a + b) // 2
        same = negative(mid) == first
        a = np.where(step & same, mid, a)
        b = np.where(step & ~same, mid, b)
    hi = np.where(step & first, a, hi)     # negative for t <= a
    lo = np.where(step & last, b, lo)      # negative for t >= b
    never = ~step & ~first
    lo, hi = np.where(never, 1, lo), np.where(never, 0, hi)  # empty interval
    t = np.arange(-k, k + 1)
    if t.size * o <= 1 << 20:
        got = (t[:, None] >= lo) & (t[:, None] <= hi)
        if not np.array_equal(got, negative(np.broadcast_to(t[:, None], (t.size, o)))):
            return None
    return lo.astype(np.int32), hi.astype(np.int32)


def c_kernel_error() -> str | None:
    """Why the C backend is unavailable (``None`` when it builds)."""
    return _LIB.error()


def get_kernels(backend: str = "auto", threads: int | None = None,
                isa: str | None = None) -> NumpyKernels | CKernels:
    """The kernels of ``backend`` (``"auto"``, ``"c"`` or ``"numpy"``; env ``RESTE_PACKED_BACKEND``);
    for ``"c"``, the variant of :func:`choose_isa` (``isa`` or env ``RESTE_PACKED_ISA``)."""
    backend = (backend or "auto").lower()
    if backend == "auto":
        backend = os.environ.get("RESTE_PACKED_BACKEND", "auto").lower()
    if backend not in BACKENDS:
        raise UsageError(f"unknown packed backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "numpy":
        return NumpyKernels()
    if _LIB.get() is None:
        if backend == "c":
            raise UsageError(f"the C backend is unavailable ({c_kernel_error()}); use --backend numpy")
        return NumpyKernels()
    chosen = choose_isa(isa)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return CKernels(_variant(chosen).get() or _LIB.get(), threads, chosen)
