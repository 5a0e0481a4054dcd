/* Checks reste_bconv (mode 0: exact int32 dot products) of two builds of reste/export/csrc/packed.c against
   a bytewise popcount, on random layouts: narrow pixels read in place (the bits past each kernel row
   subtracted, Rows.tail) and word-aligned ones, strides 1 and 2, partial channel blocks; and its float
   epilogue (mode 1: alpha t + bias, then * scale + shift after a ReLU or, every other case, without one)
   bit for bit between the two builds. Built for another architecture and run under an emulator by
   tests/test_packed_cross.py (the NEON variant).
   Usage: bconv_check LIB_A LIB_B; prints "N cases, M mismatches", exits 1 on a mismatch. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*bconv_fn)(const uint8_t *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         const int64_t *, uint64_t, const uint64_t *, int64_t, int32_t, const int32_t *, int32_t,
                         const float *, const float *, const float *, const float *, int32_t, const float *,
                         const int32_t *, const int32_t *, uint8_t *, uint8_t *, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t);

static uint64_t state = 88172645463325252ull;
static uint64_t next(void) { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state; }

int main(int argc, char **argv) {
    bconv_fn fn[2];
    for (int i = 0; i < 2; i++) {
        void *lib = argc > 2 ? dlopen(argv[1 + i], RTLD_NOW) : 0;
        fn[i] = lib ? (bconv_fn)dlsym(lib, "reste_bconv") : 0;
        if (!fn[i]) { printf("cannot load reste_bconv from %s\n", argc > 2 ? argv[1 + i] : "(none)"); return 2; }
    }
    int cases = 60, bad = 0;
    for (int c = 0; c < cases; c++) {
        int64_t cb = next() % 3 == 0 ? 8 * (1 + next() % 3) : 1 + next() % 12;  /* bytes a pixel */
        int64_t kh = 1 + next() % 3, kw = 1 + next() % 3, sh = 1 + next() % 2, sw = 1 + next() % 2;
        int64_t n_img = 1 + next() % 2, OH = 1 + next() % 5, OW = 1 + next() % 6, O = 1 + next() % 40;
        int64_t Hp = (OH - 1) * sh + kh, Wp = (OW - 1) * sw + kw, span = kw * cb, L = (span + 7) / 8;
        int64_t real = span - 8 * (L - 1), Kw = kh * L, blocks = (O + 15) / 16, M = n_img * OH * OW;
        uint64_t tail = real == 8 ? 0 : ~0ull << (8 * real);
        int64_t size = n_img * Hp * Wp * cb, off[3];
        uint8_t *X = malloc(size + 8);  /* the 8 bytes after it: what the last window reads past */
        uint64_t *Bt = calloc(blocks * Kw * 16, 8);
        int32_t *out[2] = {calloc(M * O, 4), calloc(M * O, 4)};
        for (int64_t i = 0; i < size + 8; i++) X[i] = (uint8_t)next();
        for (int64_t i = 0; i < kh; i++) off[i] = i * Wp * cb;
        for (int64_t o = 0; o < O; o++)
            for (int64_t k = 0; k < Kw; k++)  /* the weights are 0 past each kernel row, as kernels.py packs them */
                Bt[((o / 16) * Kw + k) * 16 + o % 16] = next() & (k % L == L - 1 ? ~tail : ~0ull);
        int32_t K = (int32_t)(kh * span * 8);
        for (int i = 0; i < 2; i++)
            fn[i](X, Hp * Wp * cb, sh * Wp * cb, sw * cb, OH, OW, kh, L, off, tail, Bt, O, K, 0, 0, 0, 0, 0, 0, 0, 0,
                  0, 0, (uint8_t *)out[i], 0, 0, 0, 0, 0, 0, M);
        for (int64_t m = 0; m < M; m++) {
            int64_t n = m / (OH * OW), oh = m % (OH * OW) / OW, ow = m % OW;
            for (int64_t o = 0; o < O; o++) {
                int32_t differ = 0;
                for (int64_t i = 0; i < kh; i++) {
                    const uint8_t *a = X + ((n * Hp + oh * sh + i) * Wp + ow * sw) * cb;
                    for (int64_t b = 0; b < span; b++)
                        differ += __builtin_popcount(a[b] ^ (uint8_t)(Bt[((o / 16) * Kw + i * L + b / 8) * 16 + o % 16]
                                                                      >> (8 * (b % 8))));
                }
                for (int i = 0; i < 2; i++) bad += out[i][m * O + o] != K - 2 * differ;
            }
        }
        /* per-channel arrays of whole 16-lane blocks, multiples of 1/256 in (-4, 4): negative alphas and scales */
        int64_t lanes = blocks * 16;
        float *pc = malloc(4 * lanes * sizeof(float));
        for (int64_t i = 0; i < 4 * lanes; i++) pc[i] = (float)((int64_t)(next() % 2047) - 1023) / 256.0f;
        for (int i = 0; i < 2; i++)
            fn[i](X, Hp * Wp * cb, sh * Wp * cb, sw * cb, OH, OW, kh, L, off, tail, Bt, O, K, 0, 1, pc, pc + lanes,
                  pc + 2 * lanes, pc + 3 * lanes, c % 2, 0, 0, 0, (uint8_t *)out[i], 0, 0, 0, 0, 0, 0, M);
        bad += memcmp(out[0], out[1], (size_t)(M * O) * sizeof(float)) != 0;
        free(X), free(Bt), free(out[0]), free(out[1]), free(pc);
    }
    printf("%d cases, %d mismatches\n", cases, bad);
    return bad != 0;
}
