// The NCHW row-vector depthwise tile (csrc/depthwise.cpp, nchw_slide_tile_avx512)
// in isolation, 7x7 stride 1, 4 output rows x 4 row vectors, on one L1-resident
// buffer, and a whole 96-channel 56x56 plane loop around it (buffer rows built
// with masked loads, 16-row tasks), without PyTorch. Thread CPU time, best of runs.
//   g++ -O3 -mavx512f -mavx512bw -mavx512vl -mfma -o /tmp/dw_nchw_tile dev/cpu/dw_nchw_tile.cpp
//   /tmp/dw_nchw_tile 0   # tile, kernel columns at offsets 0..6 (6 of 7 loads split a line)
//   /tmp/dw_nchw_tile 1   # tile, every column at offset 0 (aligned loads: the split-load cost)
//   /tmp/dw_nchw_tile 3   # plane loop (ConvNeXt-T stage 1, batch 1)
// Results: dev/cpu/results/dw_nchw_rows/README.md.
#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

template <int R, int SH, int T, int NV>
__attribute__((noinline)) void tile(const float* buf, int64_t row_elems, const int64_t* tap_off, int64_t S,
                                    const float* wk, float* out, int64_t Wo, __mmask16 tail = 0xFFFF) {
  constexpr int NB = (T - 1) * SH + R;
  __m512 acc[T][NV];
  for (int t = 0; t < T; ++t)
    for (int v = 0; v < NV; ++v) acc[t][v] = _mm512_setzero_ps();
  for (int64_t s = 0; s < S; ++s) {
    __m512 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = _mm512_set1_ps(wk[r * S + s]);
    const float* row = buf + tap_off[s];
#pragma GCC unroll 32
    for (int b = 0; b < NB; ++b) {
      __m512 xv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        xv[v] = _mm512_loadu_ps(row + 16 * v);
        asm("" : "+v"(xv[v]));
      }
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        const int r = b - SH * t;
        if (r >= 0 && r < R)
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[t][v] = _mm512_fmadd_ps(xv[v], wv[r], acc[t][v]);
      }
      row += row_elems;
      asm("" : "+r"(row));
    }
  }
  for (int t = 0; t < T; ++t)
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(out + t * Wo + 16 * v, v == NV - 1 ? tail : 0xFFFF, acc[t][v]);
}

static double now() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int main(int argc, char** argv) {
  const int mode = argc > 1 ? atoi(argv[1]) : 0;
  const int64_t Lq = 80, rows = 64;
  float* buf = static_cast<float*>(aligned_alloc(64, rows * Lq * 4 * 2));
  for (int i = 0; i < rows * Lq * 2; ++i) buf[i] = 0.001f * (i % 100);
  float w[49], out[16 * 64];
  for (int i = 0; i < 49; ++i) w[i] = 0.01f * i;
  if (mode == 3) {
    const int64_t H = 56, C = 96, Wo = 56, pl = 3;
    float* x = static_cast<float*>(aligned_alloc(64, C * H * H * 4));
    float* y = static_cast<float*>(aligned_alloc(64, C * H * H * 4));
    for (int64_t i = 0; i < C * H * H; ++i) x[i] = 0.001f * (i % 97);
    int64_t toff[7];
    for (int s = 0; s < 7; ++s) toff[s] = s;
    double best = 1e9;
    for (int rep = 0; rep < 20; ++rep) {
      const double t0 = now();
      for (int64_t c = 0; c < C; ++c)
        for (int64_t oh0 = 0; oh0 < H; oh0 += 16) {
          for (int64_t b = 0; b < 22; ++b) {
            const int64_t ih = oh0 - 3 + b;
            float* row = buf + b * Lq;
            for (int64_t j = 0; j < Lq; j += 16) {
              const int64_t lo = std::max<int64_t>(0, pl - j), hi = std::min<int64_t>(16, H + pl - j);
              const __mmask16 m = ih < 0 || ih >= H || hi <= lo ? 0 : __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1));
              _mm512_store_ps(row + j, _mm512_maskz_loadu_ps(m, x + (c * H + std::clamp<int64_t>(ih, 0, H - 1)) * H + j - pl));
            }
          }
          for (int64_t oh = oh0; oh < std::min<int64_t>(H, oh0 + 16); oh += 4)
            tile<7, 1, 4, 4>(buf + (oh - oh0) * Lq, Lq, toff, 7, w, y + (c * H + oh) * Wo, Wo, 0xFF);
        }
      best = std::min(best, now() - t0);
    }
    printf("plane loop: %.3f ms, %.1f GFLOP/s\n", best * 1e3, 2.0 * C * H * H * 49 / best / 1e9);
    return 0;
  }
  int64_t off[7];
  for (int s = 0; s < 7; ++s) off[s] = mode == 0 ? s : 0;
  const int iters = 200000;
  const double t0 = now();
  for (int i = 0; i < iters; ++i) tile<7, 1, 4, 4>(buf, Lq, off, 7, w, out, 64);
  const double t = now() - t0;
  const double fmas = double(iters) * 7 * 28 * 4;
  printf("mode %d: %.1f ns/tile, %.1f GFLOP/s\n", mode, t / iters * 1e9, fmas * 32 / t / 1e9);
  return static_cast<int>(out[3]) & 1;
}
