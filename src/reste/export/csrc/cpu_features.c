/* reste CPU probe (see reste/export/kernels.py: cpu_features). */

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

/* AMX with int8 (CPUID.7.0:EDX bits 24 and 25), its tile state enabled by the kernel (XCR0 bits 17 and 18)
   and this process allowed to use it (Linux asks for that once per process: arch_prctl
   ARCH_REQ_XCOMP_PERM for XTILEDATA, feature 18; granted again when already granted). */
static int amx_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d >> 24 & 1) || !(d >> 25 & 1)) return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 27 & 1)) return 0;  /* OSXSAVE: xgetbv is allowed */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo >> 17 & 3) != 3) return 0;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}
#endif

/* The instruction sets this CPU (and its operating system) can run: bit 0 popcnt, 1 AVX2,
   2 AVX-512 F/BW/VL with VPOPCNTDQ, 3 NEON, 4 AMX-INT8 (with bit 2; Linux only). */
int reste_cpu_features(void) {
#if defined(__x86_64__) || defined(__i386__)
    int f = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("popcnt")) f |= 1;
    if (__builtin_cpu_supports("avx2")) f |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq")) f |= 4;
#if defined(__x86_64__) && defined(__linux__)
    if (f & 4 && amx_usable()) f |= 16;
#endif
    return f;
#elif defined(__aarch64__)
    return 8;  /* Advanced SIMD is part of every AArch64 CPU */
#else
    return 0;
#endif
}
