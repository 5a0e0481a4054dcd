/* reste CPU probe (see reste/export/kernels.py: cpu_features). */

/* The instruction sets this CPU (and its operating system) can run: bit 0 popcnt, 1 AVX2,
   2 AVX-512 F/BW/VL with VPOPCNTDQ, 3 NEON, 4 AVX-512 F/BW/VL (with or without VPOPCNTDQ). */
int reste_cpu_features(void) {
#if defined(__x86_64__) || defined(__i386__)
    int f = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("popcnt")) f |= 1;
    if (__builtin_cpu_supports("avx2")) f |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
        f |= 16;
        if (__builtin_cpu_supports("avx512vpopcntdq")) f |= 4;
    }
    return f;
#elif defined(__aarch64__)
    return 8;  /* Advanced SIMD is part of every AArch64 CPU */
#else
    return 0;
#endif
}
