// The measured FMA peak of one core: a loop of independent fused multiply-adds
// on registers (no memory traffic), per instruction set. benchmarks/fma_peak.py
// compares the direct kernel's FLOP rate with it.
#include <c10/util/Exception.h>

#include <time.h>
#include <cstdint>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "check.h"
#include "cpu_features.h"

namespace fastconv {

namespace {

// The loop's result is used and -O3 keeps FMAs unfused across iterations (no
// -ffast-math), so the compiler cannot shorten it. kChains independent accumulators: FMA latency (4 cycles) x 2 FMA ports = 8
// in flight at least; 16 zmm (of 32) or 12 ymm (of 16, beside the two operands).
constexpr int kChains512 = 16;
constexpr int kChains256 = 12;

#if FASTCONV_X86
FASTCONV_TARGET_AVX512 double fma_loop_avx512(int64_t iters) {
  __m512 acc[kChains512];
  for (int i = 0; i < kChains512; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains512; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kChains512; ++i) s = _mm512_add_ps(s, acc[i]);
  return double(_mm512_reduce_add_ps(s));
}

FASTCONV_TARGET_AVX2 double fma_loop_avx2(int64_t iters) {
  __m256 acc[kChains256];
  for (int i = 0; i < kChains256; ++i) acc[i] = _mm256_set1_ps(float(i));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains256; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  alignas(32) float out[8];
  __m256 s = acc[0];
  for (int i = 1; i < kChains256; ++i) s = _mm256_add_ps(s, acc[i]);
  _mm256_store_ps(out, s);
  return double(out[0]);
}
#endif

}  // namespace

// Single-thread float32 FMA throughput in GFLOP/s (2 flops per lane per FMA).
double fma_peak_gflops(const std::string& isa, int64_t iters) {
  FASTCONV_CHECK_VALUE(iters > 0, "fma_peak_gflops: iters must be positive, got ", iters);
  const CpuIsa want = parse_isa(isa.c_str());
  FASTCONV_CHECK_VALUE(want != CpuIsa::Portable, "fma_peak_gflops: isa must be avx2 or avx512");
  FASTCONV_CHECK_VALUE(cpu_isa_supported() >= want, "fma_peak_gflops: this CPU has no ", isa);
#if FASTCONV_X86
  const int lanes = want == CpuIsa::Avx512 ? 16 : 8;
  // The thread's CPU time: time spent descheduled by other processes is not counted.
  timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  volatile double sink = want == CpuIsa::Avx512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
  (void)sink;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  const double s = double(t1.tv_sec - t0.tv_sec) + 1e-9 * double(t1.tv_nsec - t0.tv_nsec);
  const int chains = want == CpuIsa::Avx512 ? kChains512 : kChains256;
  return double(iters) * chains * lanes * 2 / s * 1e-9;
#else
  return 0.0;
#endif
}

}  // namespace fastconv
