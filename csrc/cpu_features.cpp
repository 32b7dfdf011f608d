#include "cpu_features.h"

#include <atomic>

namespace fastconv {

namespace {
std::atomic<bool> g_force_portable{false};
}

bool cpu_has_avx2_fma() {
#if FASTCONV_X86
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

void set_force_portable(bool on) { g_force_portable.store(on); }

bool use_avx2_fma() { return cpu_has_avx2_fma() && !g_force_portable.load(); }

}  // namespace fastconv
