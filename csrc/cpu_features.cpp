#include "cpu_features.h"

#include "check.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace fastconv {

namespace {

CpuIsa detect() {
#if FASTCONV_X86
  // libgcc's checks include the OS's XSAVE support of the ymm/zmm state.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return CpuIsa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::Avx2;
#endif
  return CpuIsa::Portable;
}

CpuIsa env_cap() {
  const char* e = std::getenv("FASTCONV_CPU_ISA");
  if (!e || !*e) return CpuIsa::Avx512;
  return parse_isa(e);
}

std::atomic<int> g_cap{-1};  // -1: not read yet (FASTCONV_CPU_ISA)

int cap() {
  int c = g_cap.load(std::memory_order_relaxed);
  if (c < 0) {
    c = int(env_cap());
    g_cap.store(c);
  }
  return c;
}

}  // namespace

CpuIsa cpu_isa_supported() {
  static const CpuIsa isa = detect();
  return isa;
}

CpuIsa cpu_isa() {
  const int s = int(cpu_isa_supported()), c = cap();
  return CpuIsa(s < c ? s : c);
}

void set_max_isa(CpuIsa isa) { g_cap.store(int(isa)); }

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512: return "avx512";
    case CpuIsa::Avx2: return "avx2";
    default: return "portable";
  }
}

CpuIsa parse_isa(const char* name) {
  if (!std::strcmp(name, "avx512")) return CpuIsa::Avx512;
  if (!std::strcmp(name, "avx2")) return CpuIsa::Avx2;
  if (!std::strcmp(name, "portable")) return CpuIsa::Portable;
  FASTCONV_CHECK_VALUE(false, "fastconv: unknown CPU ISA '", name,
                    "' (FASTCONV_CPU_ISA / set_max_isa); expected portable, avx2 or avx512");
}

bool cpu_has_avx2_fma() { return cpu_isa_supported() >= CpuIsa::Avx2; }

void set_force_portable(bool on) { set_max_isa(on ? CpuIsa::Portable : env_cap()); }

}  // namespace fastconv
