"""Binary convolution on packed bits: sign -> pack -> im2col -> XOR/popcount GEMM.

For +-1 vectors a and w of length K stored as bits (1 = -1),
``dot(a, w) = K - 2 * popcount(a XOR w)``. A binary convolution is such a GEMM
between the rows of an im2col matrix of the packed input signs and the packed
weight rows:

* layout: activations are NHWC; the sign bits of a pixel's C channels are packed
  into ``Cb = ceil(C / 8)`` bytes (little bit order); an im2col row is the
  ``kh * kw`` pixels of a window, ``kh * kw * Cb`` bytes, zero-filled to a multiple
  of 8 bytes and read as uint64 words. Weights are packed the same way, so unused
  bits are 0 in both operands and add nothing to the popcount.
* zero padding: the training model pads the *signed* input with 0, so a padded
  position adds nothing to the dot product. The packed input is padded with bit 0
  (= +1), which adds ``sum_c w[o, c, i, j]`` for every kernel position (i, j) that
  falls in the padding; ``padding_correction`` precomputes that sum per output
  position and channel (it depends on the position, not the image) and the GEMM
  subtracts it, so the result is exact.
* epilogue: ``y = alpha[o] * (K - 2 popcount - corr[p, o]) + b[o]``, optionally
  followed by ReLU and a per-channel affine (the conv -> ReLU -> BN of every
  binary block), in one pass.

Two backends compute the same integers: ``"numpy"`` (portable; ``np.bitwise_count``)
and ``"c"``, a small C kernel (scalar ``popcnt``, or AVX2 nibble-table popcounts
where the CPU has AVX2) compiled on first use by :mod:`reste.native` (the system C
compiler, ``-O3 -march=native``, cached under ``~/.cache/reste``); ``"auto"`` takes ``"c"`` when it builds
and ``"numpy"`` otherwise. The C functions are called through ``ctypes``, which releases the GIL,
so rows are split over threads (``torch.get_num_threads()``).
"""

from __future__ import annotations

import ctypes
import os
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


def conv_weight_words(signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed rows (O, W) uint64 of a +-1 conv weight (O, C, kh, kw), in (kh, kw, C) order,
    and ``S[o, i*kw + j] = sum_c w[o, c, i, j]`` (int32) for the padding correction."""
    neg = np.ascontiguousarray(signs.transpose(0, 2, 3, 1)) < 0
    s = signs.sum(axis=1, dtype=np.int32).reshape(signs.shape[0], -1)
    return pack_rows(neg), np.ascontiguousarray(s)


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

_C_SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* x: (N, H, W, C) float32; out: (N, Hp, Wp, Cb) uint8, interior at (pt, pl), padding left as is.
   Bit i of byte b is x[c = 8b + i] < 0. Images n0 .. n1-1. */
void reste_pack_signs(const float *x, int64_t H, int64_t W, int64_t C, uint8_t *out, int64_t Hp,
                      int64_t Wp, int64_t Cb, int64_t pt, int64_t pl, int64_t n0, int64_t n1) {
    int64_t full = C / 8;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t w = 0; w < W; w++) {
                const float *px = x + ((n * H + h) * W + w) * C;
                uint8_t *po = out + ((n * Hp + h + pt) * Wp + w + pl) * Cb;
                for (int64_t b = 0; b < full; b++) {
                    const float *q = px + 8 * b;
                    po[b] = (uint8_t)((q[0] < 0.0f) | (q[1] < 0.0f) << 1 | (q[2] < 0.0f) << 2 |
                                      (q[3] < 0.0f) << 3 | (q[4] < 0.0f) << 4 | (q[5] < 0.0f) << 5 |
                                      (q[6] < 0.0f) << 6 | (q[7] < 0.0f) << 7);
                }
                if (full < Cb) {
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

/* One output row: y[o] = alpha[o] (K - 2 cnt[o] - crow[o]) + bias[o] [-> ReLU -> * scale[o] + shift[o]].
   Plain loops over o, which the compiler vectorises. */
static void epilogue(float *y, const uint32_t *cnt, int64_t O, int32_t K, const int32_t *crow,
                     const float *alpha, const float *bias, const float *scale, const float *shift) {
    if (crow)
        for (int64_t o = 0; o < O; o++) y[o] = alpha[o] * (float)(K - 2 * (int32_t)cnt[o] - crow[o]) + bias[o];
    else
        for (int64_t o = 0; o < O; o++) y[o] = alpha[o] * (float)(K - 2 * (int32_t)cnt[o]) + bias[o];
    if (scale)
        for (int64_t o = 0; o < O; o++) y[o] = (y[o] > 0.0f ? y[o] : 0.0f) * scale[o] + shift[o];
}

#ifdef __AVX2__
#include <immintrin.h>
static inline __m256i pc8(__m256i x, __m256i lut, __m256i nib) {  /* popcount of each byte */
    __m256i lo = _mm256_and_si256(x, nib);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}
static inline uint64_t hsum(__m256i v) {
    __m256i s = _mm256_sad_epu8(v, _mm256_setzero_si256());
    __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return (uint64_t)_mm_cvtsi128_si64(t) + (uint64_t)_mm_extract_epi64(t, 1);
}
#endif
/* out[m, o] = epilogue(K - 2 popcount(A[m] ^ B[o]) - corr[m % P, o]) for rows m0 .. m1-1.
   A: (M, W) words, B: (O, W) words. corr may be NULL; scale/shift NULL means no ReLU + affine.
   cnt: scratch of 4 * O counts. Blocks of 4 rows x 2 weight rows; with AVX2, 4 words at a time
   (nibble-table popcount of bytes, summed with SAD at most every 31 steps so the byte counters
   cannot overflow). */
void reste_bgemm(const uint64_t *A, const uint64_t *B, int64_t O, int64_t W, int32_t K, const int32_t *corr,
                 int64_t P, const float *alpha, const float *bias, const float *scale, const float *shift,
                 float *out, uint32_t *cnt, int64_t m0, int64_t m1) {
#ifdef __AVX2__
    const __m256i lut = _mm256_setr_epi8(0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4,0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4);
    const __m256i nib = _mm256_set1_epi8(0x0f);
    int64_t W4 = W & ~(int64_t)3;
#else
    int64_t W4 = 0;
#endif
    for (int64_t r = m0; r < m1; r += 4) {
        int64_t mr = m1 - r < 4 ? m1 - r : 4;
        const uint64_t *a0 = A + r * W;
        const uint64_t *a1 = mr > 1 ? a0 + W : a0;
        const uint64_t *a2 = mr > 2 ? a0 + 2 * W : a0;
        const uint64_t *a3 = mr > 3 ? a0 + 3 * W : a0;
        for (int64_t o = 0; o < O; o += 2) {
            int64_t orr = O - o < 2 ? O - o : 2;
            const uint64_t *b0 = B + o * W;
            const uint64_t *b1 = orr > 1 ? b0 + W : b0;
            uint64_t c00 = 0, c01 = 0, c10 = 0, c11 = 0, c20 = 0, c21 = 0, c30 = 0, c31 = 0;
#ifdef __AVX2__
            int64_t k = 0;
            while (k < W4) {
                int64_t end = k + 4 * 31 < W4 ? k + 4 * 31 : W4;
                __m256i s00 = _mm256_setzero_si256(), s01 = s00, s10 = s00, s11 = s00;
                __m256i s20 = s00, s21 = s00, s30 = s00, s31 = s00;
                for (; k < end; k += 4) {
                    __m256i x0 = _mm256_loadu_si256((const __m256i *)(b0 + k));
                    __m256i x1 = _mm256_loadu_si256((const __m256i *)(b1 + k));
                    __m256i y;
                    y = _mm256_loadu_si256((const __m256i *)(a0 + k));
                    s00 = _mm256_add_epi8(s00, pc8(_mm256_xor_si256(y, x0), lut, nib));
                    s01 = _mm256_add_epi8(s01, pc8(_mm256_xor_si256(y, x1), lut, nib));
                    y = _mm256_loadu_si256((const __m256i *)(a1 + k));
                    s10 = _mm256_add_epi8(s10, pc8(_mm256_xor_si256(y, x0), lut, nib));
                    s11 = _mm256_add_epi8(s11, pc8(_mm256_xor_si256(y, x1), lut, nib));
                    y = _mm256_loadu_si256((const __m256i *)(a2 + k));
                    s20 = _mm256_add_epi8(s20, pc8(_mm256_xor_si256(y, x0), lut, nib));
                    s21 = _mm256_add_epi8(s21, pc8(_mm256_xor_si256(y, x1), lut, nib));
                    y = _mm256_loadu_si256((const __m256i *)(a3 + k));
                    s30 = _mm256_add_epi8(s30, pc8(_mm256_xor_si256(y, x0), lut, nib));
                    s31 = _mm256_add_epi8(s31, pc8(_mm256_xor_si256(y, x1), lut, nib));
                }
                c00 += hsum(s00); c01 += hsum(s01); c10 += hsum(s10); c11 += hsum(s11);
                c20 += hsum(s20); c21 += hsum(s21); c30 += hsum(s30); c31 += hsum(s31);
            }
#endif
            for (int64_t k = W4; k < W; k++) {
                uint64_t x0 = b0[k], x1 = b1[k], y;
                y = a0[k]; c00 += __builtin_popcountll(y ^ x0); c01 += __builtin_popcountll(y ^ x1);
                y = a1[k]; c10 += __builtin_popcountll(y ^ x0); c11 += __builtin_popcountll(y ^ x1);
                y = a2[k]; c20 += __builtin_popcountll(y ^ x0); c21 += __builtin_popcountll(y ^ x1);
                y = a3[k]; c30 += __builtin_popcountll(y ^ x0); c31 += __builtin_popcountll(y ^ x1);
            }
            cnt[o] = (uint32_t)c00; cnt[O + o] = (uint32_t)c10; cnt[2 * O + o] = (uint32_t)c20;
            cnt[3 * O + o] = (uint32_t)c30;
            if (orr > 1) {
                cnt[o + 1] = (uint32_t)c01; cnt[O + o + 1] = (uint32_t)c11; cnt[2 * O + o + 1] = (uint32_t)c21;
                cnt[3 * O + o + 1] = (uint32_t)c31;
            }
        }
        for (int64_t i = 0; i < mr; i++)
            epilogue(out + (r + i) * O, cnt + i * O, O, K, corr ? corr + ((r + i) % P) * O : 0, alpha, bias,
                     scale, shift);
    }
}
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64

_LIB = NativeLibrary("packed", _C_SOURCE, {
    "reste_pack_signs": ([_P, _I, _I, _I, _P, _I, _I, _I, _I, _I, _I, _I], None),
    "reste_im2col": ([_P] + [_I] * 11 + [_P, _I, _I, _I], None),
    "reste_bgemm": ([_P, _P, _I, _I, ctypes.c_int32, _P, _I, _P, _P, _P, _P, _P, _P, _I, _I], None),
}, flag_sets=(("-O3", "-march=native"), ("-O3", "-mpopcnt"), ("-O3",)))


class CKernels:
    """The compiled backend (same results as :class:`NumpyKernels`)."""

    name = "c"

    def __init__(self, lib: ctypes.CDLL, threads: int) -> None:
        self.lib = lib
        self.threads = max(1, threads)

    def _split(self, total: int, work: int, fn: Callable[[int, int], Any], align: int = 1) -> None:
        """Run fn(lo, hi) over [0, total) in up to ``threads`` pieces when the work is large enough."""
        parallel_for(total, fn, self.threads, work=work, align=align)

    def pack_signs(self, x: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, h, w, c = x.shape
        pt, pb, pl, pr = pad
        cb = -(-c // 8)
        hp, wp = h + pt + pb, w + pl + pr
        out = (np.zeros if (pt or pb or pl or pr) else np.empty)((n, hp, wp, cb), dtype=np.uint8)
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

    def gemm(self, a: np.ndarray, b: np.ndarray, k: int, corr: np.ndarray | None, alpha: np.ndarray,
             bias: np.ndarray, post: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        a = np.ascontiguousarray(a)
        m, words = a.shape
        o = b.shape[0]
        out = np.empty((m, o), dtype=np.float32)
        keep = (a, b, corr, alpha, bias, post)  # noqa: F841 - keep the buffers alive during the call
        ptr = lambda arr: None if arr is None else arr.ctypes.data  # noqa: E731
        cp, p = (ptr(corr), corr.shape[0]) if corr is not None else (None, 1)
        sc, sh = (ptr(post[0]), ptr(post[1])) if post is not None else (None, None)
        args = (ptr(a), ptr(b), o, words, k, cp, p, ptr(alpha), ptr(bias), sc, sh, ptr(out))

        def run(lo: int, hi: int) -> None:
            scratch = np.empty(4 * o, dtype=np.uint32)
            self.lib.reste_bgemm(*args, scratch.ctypes.data, lo, hi)

        self._split(m, m * o * words, run, align=4)
        return out


def c_kernel_error() -> str | None:
    """Why the C backend is unavailable (``None`` when it builds)."""
    return _LIB.error()


def get_kernels(backend: str = "auto", threads: int | None = None) -> NumpyKernels | CKernels:
    """The kernels of ``backend`` (``"auto"``, ``"c"`` or ``"numpy"``; env ``RESTE_PACKED_BACKEND``)."""
    backend = (backend or "auto").lower()
    if backend == "auto":
        backend = os.environ.get("RESTE_PACKED_BACKEND", "auto").lower()
    if backend not in BACKENDS:
        raise UsageError(f"unknown packed backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "numpy":
        return NumpyKernels()
    lib = _LIB.get()
    if lib is None:
        if backend == "c":
            raise UsageError(f"the C backend is unavailable ({c_kernel_error()}); use --backend numpy")
        return NumpyKernels()
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return CKernels(lib, threads)
