// Run-time CPU dispatch. SIMD kernels are compiled with per-function target
// attributes (the build has no -m flags), so the binary loads and runs on any
// x86-64 CPU; callers ask cpu_isa() and take the best path it allows.
#pragma once

namespace fastconv {

// Instruction-set levels, ordered: a level implies the ones below it.
enum class CpuIsa { Portable = 0, Avx2 = 1, Avx512 = 2 };

// The best level this CPU (and OS) supports, before any cap.
CpuIsa cpu_isa_supported();
// The level kernels use now: cpu_isa_supported(), capped by the environment
// variable FASTCONV_CPU_ISA (portable|avx2|avx512, read once at load, like
// oneDNN's ONEDNN_MAX_CPU_ISA) and by set_max_isa (tests force each path).
CpuIsa cpu_isa();
void set_max_isa(CpuIsa isa);
const char* isa_name(CpuIsa isa);
// Parses portable|avx2|avx512; FASTCONV_CHECKs the name.
CpuIsa parse_isa(const char* name);

inline bool use_avx2_fma() { return cpu_isa() >= CpuIsa::Avx2; }
inline bool use_avx512() { return cpu_isa() >= CpuIsa::Avx512; }

// Older switches, kept for callers and tests: AVX2+FMA support of the CPU, and
// forcing the portable path (set_max_isa(Portable) / back to no cap).
bool cpu_has_avx2_fma();
void set_force_portable(bool on);

}  // namespace fastconv

#if defined(__x86_64__) || defined(_M_X64)
#define FASTCONV_X86 1
#define FASTCONV_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FASTCONV_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define FASTCONV_X86 0
#define FASTCONV_TARGET_AVX2
#define FASTCONV_TARGET_AVX512
#endif
