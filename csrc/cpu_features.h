// Run-time CPU dispatch. AVX2+FMA kernels are compiled with a per-function
// target attribute, so the binary still loads and runs on CPUs without AVX2;
// callers check use_avx2_fma() and fall back to the portable path.
#pragma once

namespace fastconv {

bool cpu_has_avx2_fma();
// Tests force the portable path to cover it on AVX2 machines.
void set_force_portable(bool on);
// cpu_has_avx2_fma() && !forced portable.
bool use_avx2_fma();

}  // namespace fastconv

#if defined(__x86_64__) || defined(_M_X64)
#define FASTCONV_X86 1
#define FASTCONV_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTCONV_X86 0
#define FASTCONV_TARGET_AVX2
#endif
