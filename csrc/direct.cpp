// direct: convolution without a column buffer. Weights are packed once into
// [group][Kg/8 blocks][Cg][R][S][8] (8 output channels innermost, zero-padded
// tail block), so one AVX2 vector holds 8 output channels of one (c, r, s) tap.
// The micro-kernel keeps a register tile of kDirectOcVectors x 8 output
// channels by kDirectPixelTile output pixels in ymm accumulators for the whole
// Cg*R*S reduction: for every tap it loads the weight vectors and broadcasts
// one input value per pixel. Output rows are split into border pixels (some
// taps fall into the padding: a one-pixel tile with a clipped tap range) and
// interior pixels (no bounds checks). Bias and activation are applied when the
// tile is written, in the output's memory format.
//
// Backward uses the same engine:
//  - grad_input is a transposed convolution. Output rows/cols are split into
//    stride phases (ih mod stride_h, iw mod stride_w); each phase is a plain
//    stride-1 direct convolution of grad_output with a sub-kernel of flipped
//    taps (every stride-th tap) and channel-transposed weights.
//  - grad_weight correlates input with grad_output (packed 8 output channels
//    innermost); each task owns one (group, oc-vector pair, input channel)
//    and so a disjoint slice of grad_weight: no races, a fixed summation order.
//
// The plain loop nest of the same blocked algorithm (no vectors, no register
// tile) is direct_naive_conv2d, kept below for tests and for reading.
#include <array>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "blocking.h"
#include "check.h"
#include "cpu_features.h"
#include "direct_blocked_avx512.h"
#include "ops.h"
#include "util.h"

namespace fastconv {

namespace {

using blocking::kDirectGradWeightChannelTile;
using blocking::kDirectOcVectors;
using blocking::kDirectPixelTile;
using blocking::kDirectPixelTileSingle;
using blocking::kDirectRowBlock;
// Output channels per packed weight vector: 8 (one ymm of floats: AVX2 and the
// portable path) or 16 (one zmm: AVX-512). The packed weight's last dimension
// says which; every kernel below is a template over it.
constexpr int kB = int(blocking::kDirectOcBlock);
constexpr int kB16 = int(blocking::kDirectAvx512OcBlock);
static_assert(kB == 8, "the AVX2 kernels hold 8 float output channels per ymm register");
static_assert(kB16 == 16, "the AVX-512 kernels hold 16 float output channels per zmm register");
static_assert(kDirectOcVectors == 2, "the oc-vector pair is hard-wired in the task split");
// Widest pixel tile of any kernel (one oc vector), and the tile buffer's floats.
constexpr int kMaxTile = int(blocking::kDirectAvx512PixelTileSingle);
constexpr int kMaxTileFloats = kMaxTile * kB16;
static_assert(kDirectPixelTileSingle <= kMaxTile && kDirectPixelTile * kDirectOcVectors <= kMaxTile,
              "tile buffer too small");
static_assert(blocking::kDirectAvx512PixelTile * kDirectOcVectors <= kMaxTile, "tile buffer too small");

// Pixel-tile widths of the forward kernels for a block width B: one oc vector, two.
template <int B> constexpr int pixel_tile_single() {
  return B == 16 ? int(blocking::kDirectAvx512PixelTileSingle) : int(kDirectPixelTileSingle);
}
template <int B> constexpr int pixel_tile_pair() {
  return B == 16 ? int(blocking::kDirectAvx512PixelTile) : int(kDirectPixelTile);
}


// ---------------------------------------------------------------------------
// The forward engine: y[n, g*Ko + k, oh, ow] = act(bias + sum_{c, r, s}
//   x[n, g*Cr + c, oh*sh - ph + r*dh, ow*sw - pw + s*dw] * wp[g][k/8][c][r][s][k%8])
// with out-of-range input reading as zero. ph/pw are signed offsets (grad_input
// phases use negative ones); x and y are read/written through their strides.
template <typename T>
struct Problem {
  int64_t N, G, Cr, Ko;  // Cr: reduction channels per group; Ko: output channels per group
  int64_t H, W, Ho, Wo, R, S;
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t xn, xc, xh, xw;
  int64_t yn, yk, yh, yw;
  const T* x;
  const T* wp;
  T* y;
  const T* bias;  // Ko * G values or nullptr
  Activation act;
};

// One register tile's reduction: OCV weight vectors x PT pixels, over nc input
// channels and ntap (r, s) taps. The taps come as offset tables (input and
// packed-weight offsets of each tap), so the kernel runs one flat loop per
// channel whatever R, S, dilation or the clipped tap range of a border pixel.
template <typename T>
struct FwdTile {
  const T* x;  // input at (c = 0, pixel 0); xoff[t] adds the tap's row/column
  const T* w;  // packed weight at (oc block 0, c = 0); woff[t] adds the tap
  int64_t nc, ntap;
  const int64_t* xoff;
  const int64_t* woff;
  int64_t x_c, x_p, w_c, w_kb;
  T* out;  // [OCV][PT][8]: partial sums in (when load_acc) and out (unless stored below)
  bool load_acc;  // continue the sums of the previous input-channel block
  // Fused store (AVX2, full channel vectors, none/relu/relu6; NHWC or NCHW
  // with contiguous rows): the kernel writes y[p * y_p + (o * 8 + j) * y_k]
  // = act(acc + bias) directly, transposing in registers for NCHW.
  T* y;
  int64_t y_p, y_k;
  const T* bias;
  Activation act;
};

// The portable kernels hold one 8-lane block of output channels as Q 16-byte
// GCC/Clang vector-extension values (2 for float, 4 for double): 16 bytes is
// native SIMD on baseline x86-64 (SSE2) and on Arm (NEON), so the compiler
// keeps the same register tile without intrinsics. (One 32-byte generic vector
// made GCC broadcast scalars through the stack: 25x slower, measured.)
template <typename T, int B = kB>
struct Lanes {
  typedef T type __attribute__((vector_size(16)));
  static constexpr int Q = int(B * sizeof(T) / 16);
};
template <typename T>
inline typename Lanes<T>::type load_lanes(const T* p) {
  typename Lanes<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void store_lanes(T* p, const typename Lanes<T>::type& v) {
  std::memcpy(p, &v, sizeof(v));
}
constexpr int kLanesPerPart(int bytes) { return 16 / bytes; }

template <typename T, int B, int OCV, int PT>
void fwd_tile_portable(const FwdTile<T>& a) {
  using V = typename Lanes<T, B>::type;
  constexpr int Q = Lanes<T, B>::Q, L = kLanesPerPart(sizeof(T));
  V acc[OCV][PT][Q];
#pragma GCC unroll 16
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 16
    for (int p = 0; p < PT; ++p)
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q)
        acc[o][p][q] = a.load_acc ? load_lanes(a.out + (o * PT + p) * B + q * L) : V{};
  const T* xc = a.x;
  const T* wc = a.w;
  for (int64_t c = 0; c < a.nc; ++c, xc += a.x_c, wc += a.w_c)
    for (int64_t t = 0; t < a.ntap; ++t) {
      const T* xs = xc + a.xoff[t];
      const T* ws = wc + a.woff[t];
      V w[OCV][Q];
#pragma GCC unroll 16
      for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 4
        for (int q = 0; q < Q; ++q) w[o][q] = load_lanes(ws + o * a.w_kb + q * L);
#pragma GCC unroll 16
      for (int p = 0; p < PT; ++p) {
        const T xv = xs[p * a.x_p];
#pragma GCC unroll 16
        for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 4
          for (int q = 0; q < Q; ++q) acc[o][p][q] += w[o][q] * xv;
      }
    }
#pragma GCC unroll 16
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 16
    for (int p = 0; p < PT; ++p)
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q) store_lanes(a.out + (o * PT + p) * B + q * L, acc[o][p][q]);
}

#if FASTCONV_X86
// Narrow tiles (border pixels, row tails) have too few accumulators to hide
// the 4-cycle FMA latency on 2 FMA ports (8 chains needed): they split the
// taps over U independent accumulator sets, summed at the end (fixed order).
template <int OCV, int PT>
FASTCONV_TARGET_AVX2 __attribute__((always_inline)) inline void fwd_step_avx2(
    __m256 (&acc)[OCV][PT], const float* xs, const float* ws, int64_t xp, int64_t wkb) {
  __m256 w[OCV];
#pragma GCC unroll 4
  for (int o = 0; o < OCV; ++o) w[o] = _mm256_loadu_ps(ws + o * wkb);
#pragma GCC unroll 16
  for (int p = 0; p < PT; ++p) {
    const __m256 xv = _mm256_broadcast_ss(xs + p * xp);
#pragma GCC unroll 4
    for (int o = 0; o < OCV; ++o) acc[o][p] = _mm256_fmadd_ps(w[o], xv, acc[o][p]);
  }
}

template <int OCV, int PT>
FASTCONV_TARGET_AVX2 void fwd_tile_avx2(const FwdTile<float>& a) {
  constexpr int U = OCV * PT >= 8 ? 1 : (OCV * PT >= 4 ? 2 : 4);
  __m256 acc[OCV][PT], acc1[OCV][PT], acc2[OCV][PT], acc3[OCV][PT];
  #pragma GCC unroll 16
  for (int o = 0; o < OCV; ++o)
    #pragma GCC unroll 16
    for (int p = 0; p < PT; ++p) {
      acc1[o][p] = acc2[o][p] = acc3[o][p] = _mm256_setzero_ps();
      acc[o][p] = a.load_acc ? _mm256_loadu_ps(a.out + (o * PT + p) * kB) : acc1[o][p];
    }
  const float* xc = a.x;
  const float* wc = a.w;
  const int64_t xp = a.x_p, wkb = a.w_kb, ntap = a.ntap;
  const int64_t* xoff = a.xoff;
  const int64_t* woff = a.woff;
  for (int64_t c = 0; c < a.nc; ++c, xc += a.x_c, wc += a.w_c) {
    int64_t t = 0;
    if constexpr (U == 2) {
      for (; t + 2 <= ntap; t += 2) {
        fwd_step_avx2<OCV, PT>(acc, xc + xoff[t], wc + woff[t], xp, wkb);
        fwd_step_avx2<OCV, PT>(acc1, xc + xoff[t + 1], wc + woff[t + 1], xp, wkb);
      }
    }
    if constexpr (U == 4) {
      for (; t + 4 <= ntap; t += 4) {
        fwd_step_avx2<OCV, PT>(acc, xc + xoff[t], wc + woff[t], xp, wkb);
        fwd_step_avx2<OCV, PT>(acc1, xc + xoff[t + 1], wc + woff[t + 1], xp, wkb);
        fwd_step_avx2<OCV, PT>(acc2, xc + xoff[t + 2], wc + woff[t + 2], xp, wkb);
        fwd_step_avx2<OCV, PT>(acc3, xc + xoff[t + 3], wc + woff[t + 3], xp, wkb);
      }
    }
    for (; t < ntap; ++t) fwd_step_avx2<OCV, PT>(acc, xc + xoff[t], wc + woff[t], xp, wkb);
  }
  if constexpr (U > 1) {
    #pragma GCC unroll 16
    for (int o = 0; o < OCV; ++o)
      #pragma GCC unroll 16
      for (int p = 0; p < PT; ++p)
        acc[o][p] = _mm256_add_ps(_mm256_add_ps(acc[o][p], acc1[o][p]),
                                  _mm256_add_ps(acc2[o][p], acc3[o][p]));
  }
  if (a.y) {
    const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
#pragma GCC unroll 16
    for (int o = 0; o < OCV; ++o) {
      const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + o * kB) : zero;
#pragma GCC unroll 16
      for (int p = 0; p < PT; ++p) {
        __m256 v = _mm256_add_ps(acc[o][p], b);
        // MAXPS/MINPS return their second operand when either is NaN: v goes second.
        if (a.act == Activation::ReLU) v = _mm256_max_ps(zero, v);
        if (a.act == Activation::ReLU6) v = _mm256_min_ps(six, _mm256_max_ps(zero, v));
        acc[o][p] = v;
      }
    }
    if (a.y_k == 1) {  // NHWC: each accumulator is 8 contiguous channels of one pixel
#pragma GCC unroll 16
      for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 16
        for (int p = 0; p < PT; ++p) _mm256_storeu_ps(a.y + p * a.y_p + o * kB, acc[o][p]);
    } else {  // NCHW (y_p == 1): 8x8 register transpose, then one PT-pixel run per channel
#pragma GCC unroll 16
      for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 2
        for (int p0 = 0; p0 < PT; p0 += 8) {
          __m256 r[8];
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) r[i] = p0 + i < PT ? acc[o][p0 + i < PT ? p0 + i : 0] : zero;
          const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
          const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
          const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
          const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
          const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
          const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
          const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
          const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
          const __m256 ch[8] = {
              _mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
              _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
              _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
              _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
          float* yo = a.y + o * kB * a.y_k + p0;
          const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(PT - p0 >= 8 ? 8 : PT - p0),
                                               _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j) _mm256_maskstore_ps(yo + j * a.y_k, m, ch[j]);
        }
    }
    return;
  }
  #pragma GCC unroll 16
  for (int o = 0; o < OCV; ++o)
    #pragma GCC unroll 16
    for (int p = 0; p < PT; ++p) _mm256_storeu_ps(a.out + (o * PT + p) * kB, acc[o][p]);
}

// AVX-512: the same tile with 16 output channels per zmm vector (weights packed
// [..][16]). 32 zmm registers hold OCV x PT accumulators (2 x 12 or 1 x 24),
// the OCV weight vectors and one broadcast.
template <int OCV, int PT>
FASTCONV_TARGET_AVX512 __attribute__((always_inline)) inline void fwd_step_avx512(
    __m512 (&acc)[OCV][PT], const float* xs, const float* ws, int64_t xp, int64_t wkb) {
  __m512 w[OCV];
#pragma GCC unroll 4
  for (int o = 0; o < OCV; ++o) w[o] = _mm512_loadu_ps(ws + o * wkb);
#pragma GCC unroll 32
  for (int p = 0; p < PT; ++p) {
    const __m512 xv = _mm512_set1_ps(xs[p * xp]);
#pragma GCC unroll 4
    for (int o = 0; o < OCV; ++o) acc[o][p] = _mm512_fmadd_ps(w[o], xv, acc[o][p]);
  }
}

template <int OCV, int PT>
FASTCONV_TARGET_AVX512 void fwd_tile_avx512(const FwdTile<float>& a) {
  constexpr int B = kB16;
  // Narrow tiles split the taps over U accumulator sets (4-cycle FMA latency,
  // 2 FMA ports: 8 independent chains), summed at the end in a fixed order.
  constexpr int U = OCV * PT >= 8 ? 1 : (OCV * PT >= 4 ? 2 : 4);
  __m512 acc[OCV][PT], acc1[OCV][PT], acc2[OCV][PT], acc3[OCV][PT];
#pragma GCC unroll 32
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 32
    for (int p = 0; p < PT; ++p) {
      acc1[o][p] = acc2[o][p] = acc3[o][p] = _mm512_setzero_ps();
      acc[o][p] = a.load_acc ? _mm512_loadu_ps(a.out + (o * PT + p) * B) : acc1[o][p];
    }
  const float* xc = a.x;
  const float* wc = a.w;
  const int64_t xp = a.x_p, wkb = a.w_kb, ntap = a.ntap;
  const int64_t* xoff = a.xoff;
  const int64_t* woff = a.woff;
  for (int64_t c = 0; c < a.nc; ++c, xc += a.x_c, wc += a.w_c) {
    int64_t t = 0;
    if constexpr (U == 2) {
      for (; t + 2 <= ntap; t += 2) {
        fwd_step_avx512<OCV, PT>(acc, xc + xoff[t], wc + woff[t], xp, wkb);
        fwd_step_avx512<OCV, PT>(acc1, xc + xoff[t + 1], wc + woff[t + 1], xp, wkb);
      }
    }
    if constexpr (U == 4) {
      for (; t + 4 <= ntap; t += 4) {
        fwd_step_avx512<OCV, PT>(acc, xc + xoff[t], wc + woff[t], xp, wkb);
        fwd_step_avx512<OCV, PT>(acc1, xc + xoff[t + 1], wc + woff[t + 1], xp, wkb);
        fwd_step_avx512<OCV, PT>(acc2, xc + xoff[t + 2], wc + woff[t + 2], xp, wkb);
        fwd_step_avx512<OCV, PT>(acc3, xc + xoff[t + 3], wc + woff[t + 3], xp, wkb);
      }
    }
    for (; t < ntap; ++t) fwd_step_avx512<OCV, PT>(acc, xc + xoff[t], wc + woff[t], xp, wkb);
  }
  if constexpr (U > 1) {
#pragma GCC unroll 32
    for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 32
      for (int p = 0; p < PT; ++p)
        acc[o][p] = _mm512_add_ps(_mm512_add_ps(acc[o][p], acc1[o][p]),
                                  _mm512_add_ps(acc2[o][p], acc3[o][p]));
  }
  if (!a.y) {
#pragma GCC unroll 32
    for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 32
      for (int p = 0; p < PT; ++p) _mm512_storeu_ps(a.out + (o * PT + p) * B, acc[o][p]);
    return;
  }
  // Fused store: bias, activation (max(0, v) keeps NaN: MAXPS returns its second
  // operand when either is NaN, as torch.relu does), then the output's layout.
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.f);
  // NCHW: lane j of an accumulator goes to channel j's plane (y_k apart).
  const __m512i lane_offsets = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(int(a.y_k)));
#pragma GCC unroll 4
  for (int o = 0; o < OCV; ++o) {
    const __m512 b = a.bias ? _mm512_loadu_ps(a.bias + o * B) : zero;
#pragma GCC unroll 32
    for (int p = 0; p < PT; ++p) {
      __m512 v = _mm512_add_ps(acc[o][p], b);
      if (a.act == Activation::ReLU) v = _mm512_max_ps(zero, v);
      if (a.act == Activation::ReLU6) v = _mm512_min_ps(six, _mm512_max_ps(zero, v));
      if (a.y_k == 1)
        _mm512_storeu_ps(a.y + p * a.y_p + o * B, v);
      else
        _mm512_i32scatter_ps(a.y + p * a.y_p + o * B * a.y_k, lane_offsets, v, 4);
    }
  }
}
#endif

// grad_weight tile: OCV vectors of 8 output channels x NCH input channels x
// NT taps (one r, NT consecutive s), summed over (n, rows, interior pixels).
// Two input channels share each grad_output vector load: 2 dy loads + NCH*NT
// broadcasts feed OCV*NCH*NT (12) FMAs, as in the forward tile.
template <typename T>
struct GwTile {
  const T* x;   // input at (n = 0, c, first row's ih, first pixel's iw for tap 0)
  const T* dy;  // packed grad_output at (n = 0, g, first oc block, first row, first pixel)
  int64_t nn, nrows, npix;
  int64_t x_n, x_row, x_p, x_t, x_ch;
  int64_t dy_n, dy_row, dy_kb;  // pixel stride is 8
  T* out;  // [OCV][NCH][NT][8]
};

template <typename T, int OCV, int NCH, int NT>
void gw_tile_portable(const GwTile<T>& a) {
  using V = typename Lanes<T>::type;
  constexpr int Q = Lanes<T>::Q, L = kLanesPerPart(sizeof(T));
  V acc[OCV][NCH][NT][Q];
#pragma GCC unroll 16
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 16
    for (int ch = 0; ch < NCH; ++ch)
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
        for (int q = 0; q < Q; ++q) acc[o][ch][t][q] = V{};
  for (int64_t n = 0; n < a.nn; ++n)
    for (int64_t row = 0; row < a.nrows; ++row) {
      const T* xr = a.x + n * a.x_n + row * a.x_row;
      const T* dr = a.dy + n * a.dy_n + row * a.dy_row;
      for (int64_t i = 0; i < a.npix; ++i) {
        V d[OCV][Q];
#pragma GCC unroll 16
        for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 4
          for (int q = 0; q < Q; ++q) d[o][q] = load_lanes(dr + o * a.dy_kb + i * kB + q * L);
#pragma GCC unroll 16
        for (int ch = 0; ch < NCH; ++ch)
#pragma GCC unroll 16
          for (int t = 0; t < NT; ++t) {
            const T xv = xr[ch * a.x_ch + i * a.x_p + t * a.x_t];
#pragma GCC unroll 16
            for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 4
              for (int q = 0; q < Q; ++q) acc[o][ch][t][q] += d[o][q] * xv;
          }
      }
    }
#pragma GCC unroll 16
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 16
    for (int ch = 0; ch < NCH; ++ch)
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
        for (int q = 0; q < Q; ++q)
          store_lanes(a.out + ((o * NCH + ch) * NT + t) * kB + q * L, acc[o][ch][t][q]);
}

#if FASTCONV_X86
template <int OCV, int NCH, int NT>
FASTCONV_TARGET_AVX2 void gw_tile_avx2(const GwTile<float>& a) {
  __m256 acc[OCV][NCH][NT];
#pragma GCC unroll 16
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 16
    for (int ch = 0; ch < NCH; ++ch)
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) acc[o][ch][t] = _mm256_setzero_ps();
  for (int64_t n = 0; n < a.nn; ++n)
    for (int64_t row = 0; row < a.nrows; ++row) {
      const float* xr = a.x + n * a.x_n + row * a.x_row;
      const float* dr = a.dy + n * a.dy_n + row * a.dy_row;
      for (int64_t i = 0; i < a.npix; ++i) {
        __m256 d[OCV];
#pragma GCC unroll 16
        for (int o = 0; o < OCV; ++o) d[o] = _mm256_loadu_ps(dr + o * a.dy_kb + i * kB);
        const float* xi = xr + i * a.x_p;
#pragma GCC unroll 16
        for (int ch = 0; ch < NCH; ++ch)
#pragma GCC unroll 16
          for (int t = 0; t < NT; ++t) {
            const __m256 xv = _mm256_broadcast_ss(xi + ch * a.x_ch + t * a.x_t);
#pragma GCC unroll 16
            for (int o = 0; o < OCV; ++o) acc[o][ch][t] = _mm256_fmadd_ps(d[o], xv, acc[o][ch][t]);
          }
      }
    }
#pragma GCC unroll 16
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 16
    for (int ch = 0; ch < NCH; ++ch)
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t)
        _mm256_storeu_ps(a.out + ((o * NCH + ch) * NT + t) * kB, acc[o][ch][t]);
}
#endif

// Kernel tables indexed [ocv - 1][tile width]; width 0 is unused.
template <typename Fn>
struct Table {
  std::array<Fn, kMaxTile + 1> one{};  // ocv == 1: widths 1..pixel_tile_single<B>()
  std::array<Fn, kMaxTile + 1> two{};  // ocv == 2: widths 1..pixel_tile_pair<B>()
  bool fused_store = false;  // the kernels can write the output themselves (FwdTile::y)
  Fn get(int64_t ocv, int64_t width) const { return ocv == 1 ? one[width] : two[width]; }
};

template <typename T> using FwdFn = void (*)(const FwdTile<T>&);
template <typename T> using GwFn = void (*)(const GwTile<T>&);
template <int V> using Int = std::integral_constant<int, V>;

// Fills a forward table for block width B: pick(Int<ocv>, Int<width>) returns
// the kernel, instantiated only for the widths B's tiles use.
template <typename T, int B, class Pick, size_t... I>
Table<FwdFn<T>> make_fwd_table(Pick pick, std::index_sequence<I...>) {
  Table<FwdFn<T>> t;
  auto one = [&](auto w) {
    if constexpr (decltype(w)::value <= pixel_tile_single<B>()) t.one[w] = pick(Int<1>{}, w);
  };
  auto two = [&](auto w) {
    if constexpr (decltype(w)::value <= pixel_tile_pair<B>()) t.two[w] = pick(Int<2>{}, w);
  };
  (one(Int<int(I) + 1>{}), ...);
  (two(Int<int(I) + 1>{}), ...);
  return t;
}

// grad_weight kernels indexed by gw_index(ocv, nch, nt).
constexpr int kGwMaxTaps = 6;
constexpr int kGwKernels = 2 * 2 * kGwMaxTaps;
inline int gw_index(int64_t ocv, int64_t nch, int64_t nt) {
  return int(((ocv - 1) * 2 + (nch - 1)) * kGwMaxTaps + (nt - 1));
}
template <typename T> using GwTable = std::array<GwFn<T>, kGwKernels>;
template <typename T, size_t... I>
GwTable<T> make_gw_portable(std::index_sequence<I...>) {
  return {&gw_tile_portable<T, int(I) / (2 * kGwMaxTaps) + 1, int(I) / kGwMaxTaps % 2 + 1,
                            int(I) % kGwMaxTaps + 1>...};
}
#if FASTCONV_X86
template <size_t... I>
GwTable<float> make_gw_avx2(std::index_sequence<I...>) {
  return {&gw_tile_avx2<int(I) / (2 * kGwMaxTaps) + 1, int(I) / kGwMaxTaps % 2 + 1,
                        int(I) % kGwMaxTaps + 1>...};
}
#endif

// The forward kernels for weights packed B channels innermost: AVX-512 (B = 16)
// or AVX2 (B = 8) when the CPU and the ISA cap allow, else the portable ones.
template <typename T, int B>
const Table<FwdFn<T>>& fwd_table() {
  constexpr auto widths = std::make_index_sequence<kMaxTile>();
  static const auto portable = make_fwd_table<T, B>(
      [](auto ocv, auto w) { return &fwd_tile_portable<T, B, decltype(ocv)::value, decltype(w)::value>; },
      widths);
#if FASTCONV_X86
  if constexpr (std::is_same_v<T, float> && B == kB16) {
    static const auto avx512 = [&] {
      auto t = make_fwd_table<float, B>(
          [](auto ocv, auto w) { return &fwd_tile_avx512<decltype(ocv)::value, decltype(w)::value>; },
          widths);
      t.fused_store = true;
      return t;
    }();
    if (use_avx512()) return avx512;
  }
  if constexpr (std::is_same_v<T, float> && B == kB) {
    static const auto avx2 = [&] {
      auto t = make_fwd_table<float, B>(
          [](auto ocv, auto w) { return &fwd_tile_avx2<decltype(ocv)::value, decltype(w)::value>; },
          widths);
      t.fused_store = true;
      return t;
    }();
    if (use_avx2_fma()) return avx2;
  }
#endif
  return portable;
}
// grad_weight sums over N*Ho*Wo pixels. One float accumulator per weight element over all
// of them lost ~20x aten's float32 accuracy (ResNeXt g=32 layers: 3-4e-6 against 1.4-2.5e-7
// of the largest value, float64 reference): its rounding error grows with the sum's
// length. So the tile kernels sum blocks of at most this many pixels (one image, whole
// rows), and the blocks' sums are added up apart: ~L/256 + 256 terms deep instead of L.
constexpr int64_t kGwBlockPixels = 256;

// buf[0..count) = the tile's sums over all of t's (n, row, pixel), block by block.
template <typename T, typename Fn>
void gw_blocked(Fn fn, const GwTile<T>& t, T* buf, int64_t count) {
  alignas(64) T part[kMaxTile * kB];
  std::fill(buf, buf + count, T(0));
  if (t.npix == 0) return;
  const int64_t rows = std::max<int64_t>(1, kGwBlockPixels / std::max<int64_t>(t.npix, 1));
  for (int64_t n = 0; n < t.nn; ++n)
    for (int64_t row = 0; row < t.nrows; row += rows) {
      GwTile<T> b = t;
      b.nn = 1;
      b.nrows = std::min(rows, t.nrows - row);
      b.x = t.x + n * t.x_n + row * t.x_row;
      b.dy = t.dy + n * t.dy_n + row * t.dy_row;
      b.out = part;
      fn(b);
      for (int64_t i = 0; i < count; ++i) buf[i] += part[i];
    }
}

template <typename T>
const GwTable<T>& gw_table() {
  static const auto portable = make_gw_portable<T>(std::make_index_sequence<kGwKernels>());
#if FASTCONV_X86
  if constexpr (std::is_same_v<T, float>) {
    static const auto avx2 = make_gw_avx2(std::make_index_sequence<kGwKernels>());
    if (use_avx2_fma()) return avx2;
  }
#endif
  return portable;
}

// Writes one finished tile (buf[OCV][np][B]) at output row oh, columns
// ow0..ow0+np-1, channels 0..nk-1 of the tile, with bias and activation.
template <typename T, int B>
inline void store_tile(const Problem<T>& P, const T* buf, int64_t np, int64_t nk, T* y,
                       const T* bias, int64_t oh, int64_t ow0) {
  T* base = y + oh * P.yh + ow0 * P.yw;
  if (P.yk == 1) {  // NHWC: contiguous channels per pixel
    for (int64_t p = 0; p < np; ++p) {
      T* yp = base + p * P.yw;
      for (int64_t k = 0; k < nk; ++k) {
        const T v = buf[((k / B) * np + p) * B + k % B] + (bias ? bias[k] : T(0));
        yp[k] = activate(v, P.act);
      }
    }
  } else {  // NCHW: one pixel run per channel
    for (int64_t k = 0; k < nk; ++k) {
      T* yk = base + k * P.yk;
      const T b = bias ? bias[k] : T(0);
      const T* bk = buf + (k / B) * np * B + k % B;
      for (int64_t p = 0; p < np; ++p) yk[p * P.yw] = activate(bk[p * B] + b, P.act);
    }
  }
}


// Splits n interior pixels into ceil(n / tile) tiles of near-equal width, so a
// row never ends in a 1- or 2-pixel tile (13 -> 5, 4, 4 rather than 6, 6, 1).
inline int64_t balanced_width(int64_t remaining, int64_t tile) {
  const int64_t tiles = ceil_div(remaining, tile);
  return ceil_div(remaining, tiles);
}

template <typename T, int B>
void run_forward(const Problem<T>& P) {
  if (P.N == 0 || P.Ho == 0 || P.Wo == 0 || P.G == 0 || P.Ko == 0) return;
  const auto& tab = fwd_table<T, B>();
  const int64_t KB = ceil_div(P.Ko, B);
  const int64_t ocv_max = KB == 1 ? 1 : kDirectOcVectors;
  const int64_t NP = ceil_div(KB, ocv_max);
  const int64_t RB = ceil_div(P.Ho, kDirectRowBlock);
  const int64_t w_r = P.S * B, w_c = P.R * w_r, w_kb = P.Cr * w_c;
  // Interior columns: every tap s in [0, S) lands inside the input row.
  const int64_t ow_lo = clamp64(ceil_div(P.pw, P.sw), 0, P.Wo);
  const int64_t ow_hi = clamp64(floor_div(P.W - 1 - (P.S - 1) * P.dw + P.pw, P.sw) + 1, ow_lo, P.Wo);
  // Input-channel blocks: a block's packed weights for one oc-vector pair stay
  // in L1 while every tile of the task's rows runs over them; partial sums wait
  // in a per-task row buffer between blocks.
  const int64_t cin_block = std::max<int64_t>(
      1, blocking::kDirectCinBlockBytes / (P.R * P.S * ocv_max * B * int64_t(sizeof(T))));
  const bool blocked = cin_block < P.Cr;
  // AVX2 stores NHWC or NCHW with contiguous rows; AVX-512 scatters lanes y_k apart (int32).
  const bool layout_ok = B == kB16 ? P.yk * (B - 1) < (int64_t(1) << 31) : (P.yk == 1 || P.yw == 1);
  const bool can_fuse = tab.fused_store && layout_ok &&
                        (P.act == Activation::None || P.act == Activation::ReLU ||
                         P.act == Activation::ReLU6);
  at::parallel_for(0, P.N * P.G * NP * RB, 1, [&](int64_t begin, int64_t end) {
    alignas(64) T buf[kMaxTileFloats];
    std::vector<T> partial(blocked ? kDirectRowBlock * P.Wo * ocv_max * B : 0);
    // Tap tables: interior taps of the current row, and one border pixel's.
    std::vector<int64_t> tables(4 * P.R * P.S);
    int64_t* in_x = tables.data();
    int64_t* in_w = in_x + P.R * P.S;
    int64_t* bd_x = in_w + P.R * P.S;
    int64_t* bd_w = bd_x + P.R * P.S;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t rb = item % RB, pb = (item / RB) % NP, g = (item / (RB * NP)) % P.G,
                    n = item / (RB * NP * P.G);
      const int64_t kb0 = pb * ocv_max, ocv = std::min(ocv_max, KB - kb0);
      const int64_t pt_max = ocv == 1 ? pixel_tile_single<B>() : pixel_tile_pair<B>();
      const int64_t nk = std::min<int64_t>(ocv * B, P.Ko - kb0 * B);
      const T* xg = P.x + n * P.xn + g * P.Cr * P.xc;
      const T* wg = P.wp + (g * KB + kb0) * w_kb;
      T* yg = P.y + n * P.yn + (g * P.Ko + kb0 * B) * P.yk;
      const T* bg = P.bias ? P.bias + g * P.Ko + kb0 * B : nullptr;
      const bool fuse = can_fuse && nk == ocv * B;
      FwdTile<T> t;
      t.x_c = P.xc; t.x_p = P.sw * P.xw; t.w_c = w_c; t.w_kb = w_kb;
      t.y_p = P.yw; t.y_k = P.yk; t.bias = bg; t.act = P.act;
      const int64_t oh_begin = rb * kDirectRowBlock, oh_end = std::min(P.Ho, oh_begin + kDirectRowBlock);
      for (int64_t c0 = 0; c0 < P.Cr; c0 += cin_block) {
        const bool last = c0 + cin_block >= P.Cr;
        t.nc = std::min(cin_block, P.Cr - c0);
        t.load_acc = c0 > 0;
        const T* xb = xg + c0 * P.xc;
        const T* wb = wg + c0 * w_c;
        for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
          // This tile's partial sums (blocked) or the tile buffer.
          auto region = [&](int64_t ow) {
            return blocked ? partial.data() + ((oh - oh_begin) * P.Wo + ow) * ocv * B : buf;
          };
          auto finish = [&](int64_t ow, int64_t np) {
            if (last && !fuse) store_tile<T, B>(P, region(ow), np, nk, yg, bg, oh, ow);
          };
          // Rows: only the taps r that land inside the input.
          const int64_t ih0 = oh * P.sh - P.ph;
          const int64_t r_lo = clamp64(ceil_div(-ih0, P.dh), 0, P.R);
          const int64_t r_hi = clamp64(floor_div(P.H - 1 - ih0, P.dh) + 1, r_lo, P.R);
          int64_t nt = 0;
          for (int64_t r = r_lo; r < r_hi; ++r)
            for (int64_t s = 0; s < P.S; ++s, ++nt) {
              in_x[nt] = (ih0 + r * P.dh) * P.xh + s * P.dw * P.xw;
              in_w[nt] = (r * P.S + s) * B;
            }
          auto border = [&](int64_t ow) {
            const int64_t iw0 = ow * P.sw - P.pw;
            const int64_t s_lo = clamp64(ceil_div(-iw0, P.dw), 0, P.S);
            const int64_t s_hi = clamp64(floor_div(P.W - 1 - iw0, P.dw) + 1, s_lo, P.S);
            int64_t bt = 0;
            for (int64_t r = r_lo; r < r_hi; ++r)
              for (int64_t s = s_lo; s < s_hi; ++s, ++bt) {
                bd_x[bt] = (ih0 + r * P.dh) * P.xh + (iw0 + s * P.dw) * P.xw;
                bd_w[bt] = (r * P.S + s) * B;
              }
            t.x = xb; t.w = wb; t.ntap = bt; t.xoff = bd_x; t.woff = bd_w;
            t.out = region(ow);
            t.y = last && fuse ? yg + oh * P.yh + ow * P.yw : nullptr;
            tab.get(ocv, 1)(t);
            finish(ow, 1);
          };
          for (int64_t ow = 0; ow < ow_lo; ++ow) border(ow);
          t.w = wb; t.ntap = nt; t.xoff = in_x; t.woff = in_w;
          for (int64_t ow = ow_lo; ow < ow_hi;) {
            const int64_t np = balanced_width(ow_hi - ow, pt_max);
            t.x = xb + (ow * P.sw - P.pw) * P.xw;
            t.out = region(ow);
            t.y = last && fuse ? yg + oh * P.yh + ow * P.yw : nullptr;
            tab.get(ocv, np)(t);
            finish(ow, np);
            ow += np;
          }
          for (int64_t ow = ow_hi; ow < P.Wo; ++ow) border(ow);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Packing.

// weight [K, Cg, R, S] (any strides) -> [G][KB][Cg][R][S][B], zero-padded.
template <typename T>
void pack_weight(const at::Tensor& weight, int64_t G, int64_t B, T* out) {
  const int64_t K = weight.size(0), Cg = weight.size(1), R = weight.size(2), S = weight.size(3);
  const int64_t Kg = K / G, KB = ceil_div(Kg, B);
  const T* w = weight.data_ptr<T>();
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1), s2 = weight.stride(2), s3 = weight.stride(3);
  at::parallel_for(0, G * KB, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gb = begin; gb < end; ++gb) {
      const int64_t g = gb / KB, kb = gb % KB;
      T* o = out + gb * Cg * R * S * B;
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t s = 0; s < S; ++s)
            for (int64_t j = 0; j < B; ++j) {
              const int64_t k = kb * B + j;
              *o++ = k < Kg ? w[(g * Kg + k) * s0 + c * s1 + r * s2 + s * s3] : T(0);
            }
    }
  });
}

void check_packed(const char* op, const at::Tensor& packed, const at::Tensor& input,
                  const ConvParams& p) {
  check_same(op, "input", input, "packed_weight", packed);
  const int64_t B = packed.dim() == 6 ? packed.size(5) : 0;
  FASTCONV_CHECK(B == kB || (B == kB16 && packed.scalar_type() == at::kFloat), op,
              ": packed_weight has shape ", packed.sizes(), ", expected [groups, blocks, C/groups, R, "
              "S, ", int(kB), " or ", int(kB16), " (float32)] (from direct_pack_weight(weight, groups))");
  const std::vector<int64_t> want = {p.groups, ceil_div(p.Kg(), B), p.Cg, p.R, p.S, B};
  FASTCONV_CHECK(packed.sizes() == at::IntArrayRef(want), op, ": packed_weight has shape ",
              packed.sizes(), ", expected ", at::IntArrayRef(want),
              " (from direct_pack_weight(weight, groups))");
  FASTCONV_CHECK(packed.is_contiguous(), op, ": packed_weight must be contiguous");
}

// The engine for weights packed B channels innermost (B = 16: float32 only).
template <typename T>
void run_forward_packed(const Problem<T>& P, int64_t B) {
  if constexpr (std::is_same_v<T, float>) {
    if (B == kB16) return run_forward<T, kB16>(P);
  }
  run_forward<T, kB>(P);
}

template <typename T>
Problem<T> forward_problem(const ConvParams& p, const at::Tensor& input, const T* wp,
                           at::Tensor& out, const T* bias, Activation act) {
  Problem<T> P;
  P.N = p.N; P.G = p.groups; P.Cr = p.Cg; P.Ko = p.Kg();
  P.H = p.H; P.W = p.W; P.Ho = p.Ho; P.Wo = p.Wo; P.R = p.R; P.S = p.S;
  P.sh = p.stride_h; P.sw = p.stride_w; P.ph = p.pad_top; P.pw = p.pad_left;
  P.dh = p.dil_h; P.dw = p.dil_w;
  P.xn = input.stride(0); P.xc = input.stride(1); P.xh = input.stride(2); P.xw = input.stride(3);
  P.yn = out.stride(0); P.yk = out.stride(1); P.yh = out.stride(2); P.yw = out.stride(3);
  P.x = input.data_ptr<T>();
  P.wp = wp;
  P.y = out.data_ptr<T>();
  P.bias = bias;
  P.act = act;
  return P;
}

at::Tensor forward_packed(const char* op, const at::Tensor& input, const at::Tensor& packed,
                          const ConvParams& p, const c10::optional<at::Tensor>& bias,
                          Activation act, at::MemoryFormat fmt) {
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), fmt);
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "direct", [&] {
    run_forward_packed(forward_problem<scalar_t>(p, input, packed.data_ptr<scalar_t>(), out,
                                                 has_bias ? b.data_ptr<scalar_t>() : nullptr, act),
                       packed.size(5));
  });
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Ops.

// The blocked AVX-512 tiles' weight layout, packed once so that modules cache it
// (direct_conv2d_packed's 6-D layout is repacked on every call there).
bool direct_blocked_weight_applies(at::ScalarType dtype, int64_t K, int64_t Cg, int64_t groups) {
  return direct_blocked_avx512_weight_applies(K, Cg, groups, dtype);
}

at::Tensor direct_pack_blocked_weight(const at::Tensor& weight, int64_t groups) {
  const char* op = "fastconv::direct_pack_blocked_weight";
  check_float_cpu(op, "weight", weight);
  FASTCONV_CHECK(weight.dim() == 4, op, ": expected 4-D weight (K, C/groups, R, S), got ",
              weight.dim(), "-D");
  FASTCONV_CHECK(groups > 0 && weight.size(0) % groups == 0, op, ": groups=", groups,
              " must be positive and divide out_channels=", weight.size(0));
  FASTCONV_CHECK(direct_blocked_avx512_weight_applies(weight.size(0), weight.size(1), groups,
                                                   weight.scalar_type()),
              op, ": the blocked layout needs float32 on AVX-512 and channels per group that are "
              "multiples of 16 (or groups of 2, 4 or 8 channels); got weight ", weight.sizes(),
              ", groups=", groups, ", ", weight.scalar_type(), ", ISA ", isa_name(cpu_isa()),
              " (fastconv._C.direct_blocked_weight_applies)");
  return direct_blocked_avx512_pack(weight, groups);
}

at::Tensor direct_conv2d_blocked_packed(const at::Tensor& input, const at::Tensor& packed_weight,
                                        at::IntArrayRef weight_size,
                                        const c10::optional<at::Tensor>& bias,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, int64_t groups,
                                        c10::string_view activation) {
  const char* op = "fastconv::direct_conv2d_blocked_packed";
  const auto p = make_params(op, input.sizes(), weight_size, stride, padding, dilation, groups);
  check_inputs(op, input, packed_weight, bias, p);
  const auto want = direct_blocked_avx512_packed_shape(p.K, p.Cg, p.R, p.S, p.groups);
  FASTCONV_CHECK(packed_weight.sizes() == at::IntArrayRef(want), op, ": packed_weight has shape ",
              packed_weight.sizes(), ", expected ", at::IntArrayRef(want),
              " (from direct_pack_blocked_weight(weight, groups))");
  FASTCONV_CHECK(packed_weight.is_contiguous(), op, ": packed_weight must be contiguous");
  FASTCONV_CHECK(packed_weight.scalar_type() == at::kFloat, op, ": packed_weight must be float32");
  const auto act = parse_activation(std::string(activation));
  // The packed weight has no memory format of its own: the output follows the input.
  const auto fmt = input.suggest_memory_format();
  if (direct_blocked_avx512_applies(p, input.scalar_type()))
    return direct_blocked_avx512_forward_packed(input, packed_weight, bias, p, act, fmt);
  // Another ISA since packing, or an empty output: the plain weight through direct.
  const auto w = direct_blocked_avx512_unpack(packed_weight, weight_size, groups);
  return direct_conv2d(input.contiguous(fmt), w, bias, stride, padding, dilation, groups,
                       activation);
}

// Output channels per packed weight vector for this dtype and channels per
// group on the ISA in use: 16 (a zmm of floats) with AVX-512 when a group has
// more than 8 output channels, else 8 (narrower groups would leave most of a
// zmm empty; the AVX2 tiles run them).
int64_t direct_pack_block(at::ScalarType dtype, int64_t Kg) {
  return dtype == at::kFloat && use_avx512() && Kg > kB ? kB16 : kB;
}

at::Tensor direct_pack_weight(const at::Tensor& weight, int64_t groups) {
  const char* op = "fastconv::direct_pack_weight";
  check_float_cpu(op, "weight", weight);
  FASTCONV_CHECK(weight.dim() == 4, op, ": expected 4-D weight (K, C/groups, R, S), got ",
              weight.dim(), "-D");
  FASTCONV_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  FASTCONV_CHECK(weight.size(0) % groups == 0, op, ": groups=", groups,
              " does not divide out_channels=", weight.size(0));
  const int64_t Kg = weight.size(0) / groups;
  const int64_t B = direct_pack_block(weight.scalar_type(), Kg);
  auto packed = at::empty({groups, ceil_div(Kg, B), weight.size(1), weight.size(2),
                           weight.size(3), B}, weight.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "direct", [&] {
    pack_weight<scalar_t>(weight, groups, B, packed.data_ptr<scalar_t>());
  });
  return packed;
}

at::Tensor direct_conv2d_packed(const at::Tensor& input, const at::Tensor& packed_weight,
                                at::IntArrayRef weight_size, const c10::optional<at::Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups,
                                c10::string_view activation) {
  const char* op = "fastconv::direct_conv2d_packed";
  const auto p = make_params(op, input.sizes(), weight_size, stride, padding, dilation, groups);
  check_inputs(op, input, packed_weight, bias, p);
  check_packed(op, packed_weight, input, p);
  const auto act = parse_activation(std::string(activation));
  if (direct_blocked_avx512_applies(p, input.scalar_type())) {
    // [G][KB][Cg][R][S][B] -> [K][Cg][R][S]; the blocked kernel packs its own.
    const int64_t B = packed_weight.size(5), Kg = p.Kg();
    const auto w = packed_weight.permute({0, 1, 5, 2, 3, 4})
                       .reshape({p.groups, packed_weight.size(1) * B, p.Cg, p.R, p.S})
                       .slice(1, 0, Kg)
                       .reshape({p.K, p.Cg, p.R, p.S});
    return direct_blocked_avx512_forward(input, w, bias, p, act, input.suggest_memory_format());
  }
  // The packed weight has no memory format of its own: the output follows the input.
  return forward_packed(op, input, packed_weight, p, bias, act, input.suggest_memory_format());
}

at::Tensor direct_conv2d(const at::Tensor& input, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         c10::string_view activation) {
  const char* op = "fastconv::direct_conv2d";
  const auto p = check_forward_args(op, input, weight, bias, stride, padding, dilation, groups);
  const auto act = parse_activation(std::string(activation));
  if (direct_blocked_avx512_applies(p, input.scalar_type()))
    return direct_blocked_avx512_forward(input, weight, bias, p, act,
                                        conv_memory_format(input, weight));
  const auto packed = direct_pack_weight(weight, groups);
  return forward_packed(op, input, packed, p, bias, act, conv_memory_format(input, weight));
}

namespace {

// Taps of one stride phase along one axis: dx[st*a + phi] gets dy[a + e0 + j*D] * w[r[j]]
// for the taps r with (phi + pad - r*dil) divisible by st, largest r first.
struct PhaseTaps {
  std::vector<int64_t> r;
  int64_t e0 = 0, D = 1;
};
PhaseTaps phase_taps(int64_t phi, int64_t pad, int64_t dil, int64_t st, int64_t R) {
  PhaseTaps t;
  for (int64_t r = R - 1; r >= 0; --r) {
    const int64_t v = phi + pad - r * dil;
    if (((v % st) + st) % st == 0) t.r.push_back(r);
  }
  if (!t.r.empty()) {
    t.e0 = (phi + pad - t.r[0] * dil) / st;  // exact
    t.D = t.r.size() > 1 ? (t.r[0] - t.r[1]) * dil / st : 1;
  }
  return t;
}

// grad_input through the blocked AVX-512 forward, phase by phase (see the caller), or an
// undefined tensor where those tiles do not apply (a phase would need negative padding:
// grad_output rows that no input row reads; or the channels do not fit their lanes).
at::Tensor blocked_grad_input(const char* op, const at::Tensor& grad_output,
                              const at::Tensor& weight, at::IntArrayRef input_size,
                              const ConvParams& p) {
  if (p.N * p.H * p.W == 0 || p.Ho * p.Wo == 0) return at::Tensor();
  struct Phase {
    int64_t fh, fw;
    PhaseTaps th, tw;
    ConvParams tp;
  };
  std::vector<Phase> phases;
  for (int64_t fh = 0; fh < std::min(p.stride_h, p.H); ++fh)
    for (int64_t fw = 0; fw < std::min(p.stride_w, p.W); ++fw) {
      Phase ph{fh, fw, phase_taps(fh, p.pad_top, p.dil_h, p.stride_h, p.R),
               phase_taps(fw, p.pad_left, p.dil_w, p.stride_w, p.S), {}};
      if (ph.th.r.empty() || ph.tw.r.empty()) {  // no tap reaches this phase: zeros
        phases.push_back(ph);
        continue;
      }
      const int64_t Hq = ceil_div(p.H - fh, p.stride_h), Wq = ceil_div(p.W - fw, p.stride_w);
      const int64_t Rq = ph.th.r.size(), Sq = ph.tw.r.size();
      const int64_t top = -ph.th.e0, left = -ph.tw.e0;
      const int64_t bottom = Hq - p.Ho - top + (Rq - 1) * ph.th.D;
      const int64_t right = Wq - p.Wo - left + (Sq - 1) * ph.tw.D;
      if (std::min({top, left, bottom, right}) < 0) return at::Tensor();
      ph.tp = make_params(op, grad_output.sizes(), {p.C, p.Kg(), Rq, Sq}, {1, 1},
                          {top, bottom, left, right}, {ph.th.D, ph.tw.D}, p.groups);
      if (!direct_blocked_avx512_applies(ph.tp, grad_output.scalar_type())) return at::Tensor();
      phases.push_back(ph);
    }
  auto gin = new_output(input_size, grad_output.options(), grad_output.suggest_memory_format());
  for (const Phase& ph : phases) {
    auto view = gin.slice(2, ph.fh, p.H, p.stride_h).slice(3, ph.fw, p.W, p.stride_w);
    if (ph.th.r.empty() || ph.tw.r.empty()) {
      view.zero_();
      continue;
    }
    WeightTaps taps;
    taps.transposed = true;
    taps.rows = ph.th.r;
    taps.cols = ph.tw.r;
    direct_blocked_avx512_forward_into(grad_output, weight, ph.tp, taps, view);
  }
  return gin;
}

}  // namespace

at::Tensor direct_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                    at::IntArrayRef input_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups) {
  const char* op = "fastconv::direct_conv2d_grad_input";
  const auto p = check_grad_input_args(op, grad_output, weight, input_size, stride, padding,
                                       dilation, groups);
  // Dense layers where the tiles below lose (stems: few channels, 7-37x; small
  // planes: 49 pixels, 1.7-1.8x of im2col's time) run im2col's col2im kernel.
  // Channels_last on small planes too: ResNet-50's layer 4 at batch 8 (7x7 per stride phase)
  // took 13.5-14.4 ms there against the tiles' 15.5-16.8 (1 thread); NCHW keeps the tiles,
  // 1.1-1.3x faster than im2col on the same layers.
  const bool small_cl_planes =
      grad_output.suggest_memory_format() == at::MemoryFormat::ChannelsLast &&
      ceil_div(p.H, p.stride_h) * ceil_div(p.W, p.stride_w) < blocking::kDirectBlockedMinPixels;
  if (p.groups == 1 &&
      (p.C % 16 || p.N * p.H * p.W < blocking::kDirectBlockedMinPixels || small_cl_planes))
    return im2col_conv2d_grad_input(grad_output, weight, input_size, stride, padding, dilation,
                                    groups);
  // grad_input as convolutions of grad_output that the blocked AVX-512 tiles run: one per
  // stride phase (ih mod stride_h, iw mod stride_w), each a stride-1 convolution with the
  // phase's taps of the flipped, channel-transposed weight (read in place), written into
  // that phase's rows and columns of grad_input (stride 1: one phase, every tap).
  if (auto gin = blocked_grad_input(op, grad_output, weight, input_size, p); gin.defined())
    return gin;
  auto gin = new_output(input_size, grad_output.options(), grad_output.suggest_memory_format());
  if (gin.numel() == 0) return gin;
  const int64_t Kg = p.Kg(), B = direct_pack_block(grad_output.scalar_type(), p.Cg);
  const int64_t CB = ceil_div(p.Cg, B);
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "direct", [&] {
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const int64_t ws0 = weight.stride(0), ws1 = weight.stride(1), ws2 = weight.stride(2),
                  ws3 = weight.stride(3);
    // Taps of one phase along one axis: dx[st*a + phi] gets dy[a + e0 + j*D] * w[tap_j]
    // for the taps tap_j = r with (phi + pad - r*dil) divisible by st, largest r first.
    for (int64_t fh = 0; fh < std::min(p.stride_h, p.H); ++fh)
      for (int64_t fw = 0; fw < std::min(p.stride_w, p.W); ++fw) {
        const PhaseTaps th = phase_taps(fh, p.pad_top, p.dil_h, p.stride_h, p.R);
        const PhaseTaps tw = phase_taps(fw, p.pad_left, p.dil_w, p.stride_w, p.S);
        if (th.r.empty() || tw.r.empty()) {  // no tap reaches this phase
          gin.slice(2, fh, p.H, p.stride_h).slice(3, fw, p.W, p.stride_w).zero_();
          continue;
        }
        const int64_t Rp = th.r.size(), Sp = tw.r.size();
        // Channel-transposed, phase sub-kernel: [G][Cg/B][Kg][Rp][Sp][B].
        auto packed = at::empty({p.groups, CB, Kg, Rp, Sp, B}, weight.options());
        scalar_t* wp = packed.data_ptr<scalar_t>();
        at::parallel_for(0, p.groups * CB, 1, [&](int64_t begin, int64_t end) {
          for (int64_t gb = begin; gb < end; ++gb) {
            const int64_t g = gb / CB, cb = gb % CB;
            scalar_t* o = wp + gb * Kg * Rp * Sp * B;
            for (int64_t k = 0; k < Kg; ++k)
              for (int64_t jr = 0; jr < Rp; ++jr)
                for (int64_t js = 0; js < Sp; ++js)
                  for (int64_t j = 0; j < B; ++j) {
                    const int64_t c = cb * B + j;
                    *o++ = c < p.Cg ? w[(g * Kg + k) * ws0 + c * ws1 + th.r[jr] * ws2 + tw.r[js] * ws3]
                                    : scalar_t(0);
                  }
          }
        });
        Problem<scalar_t> P;
        P.N = p.N; P.G = p.groups; P.Cr = Kg; P.Ko = p.Cg;
        P.H = p.Ho; P.W = p.Wo;
        P.Ho = ceil_div(p.H - fh, p.stride_h); P.Wo = ceil_div(p.W - fw, p.stride_w);
        P.R = Rp; P.S = Sp;
        P.sh = 1; P.sw = 1; P.ph = -th.e0; P.pw = -tw.e0; P.dh = th.D; P.dw = tw.D;
        P.xn = grad_output.stride(0); P.xc = grad_output.stride(1);
        P.xh = grad_output.stride(2); P.xw = grad_output.stride(3);
        P.yn = gin.stride(0); P.yk = gin.stride(1);
        P.yh = gin.stride(2) * p.stride_h; P.yw = gin.stride(3) * p.stride_w;
        P.x = grad_output.data_ptr<scalar_t>();
        P.wp = wp;
        P.y = gin.data_ptr<scalar_t>() + fh * gin.stride(2) + fw * gin.stride(3);
        P.bias = nullptr;
        P.act = Activation::None;
        run_forward_packed(P, B);
      }
  });
  return gin;
}

at::Tensor direct_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                     at::IntArrayRef weight_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups) {
  const char* op = "fastconv::direct_conv2d_grad_weight";
  const auto p = check_grad_weight_args(op, grad_output, input, weight_size, stride, padding,
                                        dilation, groups);
  // Dense layers: im2col's kernel (one GEMM per tile of the column matrix, MKL)
  // took 0.1-0.7x the blocked correlation below on ResNet-50's kxk layers
  // (1 thread, batch 1 and 8, both layouts), so direct's autograd uses it there.
  if (p.groups == 1)
    return im2col_conv2d_grad_weight(grad_output, input, weight_size, stride, padding, dilation,
                                     groups);
  // Grouped layers the blocked AVX-512 forward runs (narrow groups across lanes, 16-channel
  // multiples): the same packed operands and lanes (direct_blocked_avx512.cpp).
  if (direct_blocked_avx512_applies(p, input.scalar_type()))
    return direct_blocked_avx512_grad_weight(grad_output, input, p);
  auto gw = new_output(weight_size, input.options(), at::MemoryFormat::Contiguous);
  const int64_t G = p.groups, Kg = p.Kg(), KB = ceil_div(Kg, kB), Ho = p.Ho, Wo = p.Wo;
  const int64_t ocv_max = KB == 1 ? 1 : kDirectOcVectors, NP = ceil_div(KB, ocv_max);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "direct", [&] {
    using T = scalar_t;
    // grad_output packed [N][G][KB][Ho][Wo][8] (zero-padded channel tail), so
    // that 8 output channels of one pixel are one vector in either layout.
    auto dyp_t = at::empty({p.N, G, KB, Ho, Wo, kB}, grad_output.options());
    T* dyp = dyp_t.data_ptr<T>();
    const T* dy = grad_output.data_ptr<T>();
    const int64_t ds0 = grad_output.stride(0), ds1 = grad_output.stride(1),
                  ds2 = grad_output.stride(2), ds3 = grad_output.stride(3);
    at::parallel_for(0, p.N * G * KB, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t kb = item % KB, g = (item / KB) % G, n = item / (KB * G);
        T* o = dyp + item * Ho * Wo * kB;
        for (int64_t oh = 0; oh < Ho; ++oh)
          for (int64_t ow = 0; ow < Wo; ++ow)
            for (int64_t j = 0; j < kB; ++j) {
              const int64_t k = kb * kB + j;
              *o++ = k < Kg ? dy[n * ds0 + (g * Kg + k) * ds1 + oh * ds2 + ow * ds3] : T(0);
            }
      }
    });
    const T* x = input.data_ptr<T>();
    const int64_t xn = input.stride(0), xc = input.stride(1), xh = input.stride(2), xw = input.stride(3);
    T* dw = gw.data_ptr<T>();
    const auto& tab = gw_table<T>();
    const int64_t RS = p.R * p.S;
    const int64_t CP = ceil_div(p.Cg, kDirectGradWeightChannelTile);
    // Each task owns grad_weight[oc pair][channel pair][:][:]: no races, fixed order.
    at::parallel_for(0, G * NP * CP, 1, [&](int64_t begin, int64_t end) {
      alignas(64) T buf[kMaxTile * kB];
      alignas(64) T edge_buf[kMaxTile * kB];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t cp = item % CP, pb = (item / CP) % NP, g = item / (CP * NP);
        const int64_t c = cp * kDirectGradWeightChannelTile;
        const int64_t nch = std::min(kDirectGradWeightChannelTile, p.Cg - c);
        const int64_t kb0 = pb * ocv_max, ocv = std::min(ocv_max, KB - kb0);
        // At most 12 accumulators: OCV x NCH x NT.
        const int64_t nt_max = std::min<int64_t>(kGwMaxTaps, kMaxTile / (ocv * nch));
        const int64_t nk = std::min<int64_t>(ocv * kB, Kg - kb0 * kB);
        const T* xg = x + (g * p.Cg + c) * xc;
        const T* dyg = dyp + (g * KB + kb0) * Ho * Wo * kB;
        GwTile<T> t;
        t.nn = p.N;
        t.x_n = xn; t.x_row = p.stride_h * xh; t.x_p = p.stride_w * xw; t.x_t = p.dil_w * xw;
        t.x_ch = xc;
        t.dy_n = G * KB * Ho * Wo * kB; t.dy_row = Wo * kB; t.dy_kb = Ho * Wo * kB;
        t.out = buf;
        for (int64_t r = 0; r < p.R; ++r) {
          // Output rows whose input row ih = oh*sh - pad + r*dil exists.
          const int64_t oh_lo = clamp64(ceil_div(p.pad_top - r * p.dil_h, p.stride_h), 0, Ho);
          const int64_t oh_hi =
              clamp64(floor_div(p.H - 1 + p.pad_top - r * p.dil_h, p.stride_h) + 1, oh_lo, Ho);
          for (int64_t s0 = 0, nt = 0; s0 < p.S; s0 += nt) {
            nt = balanced_width(p.S - s0, nt_max);
            // Interior columns: all nt taps inside the input row.
            const int64_t ow_lo = clamp64(ceil_div(p.pad_left - s0 * p.dil_w, p.stride_w), 0, Wo);
            const int64_t ow_hi = clamp64(
                floor_div(p.W - 1 + p.pad_left - (s0 + nt - 1) * p.dil_w, p.stride_w) + 1, ow_lo, Wo);
            const int64_t ih_lo = oh_lo * p.stride_h - p.pad_top + r * p.dil_h;
            t.nrows = oh_hi - oh_lo;
            t.npix = ow_hi - ow_lo;
            t.x = xg + (t.nrows ? ih_lo * xh : 0) +
                  (t.npix ? (ow_lo * p.stride_w - p.pad_left + s0 * p.dil_w) * xw : 0);
            t.dy = dyg + (oh_lo * Wo + ow_lo) * kB;
            gw_blocked(tab[gw_index(ocv, nch, nt)], t, buf, ocv * nch * nt * kB);
            // Border columns: each tap alone over the columns where it (but not
            // every tap of the chunk) lands inside the input, added to the sums.
            for (int64_t tt = 0; tt < nt && t.nrows; ++tt) {
              const int64_t sd = (s0 + tt) * p.dil_w;
              const int64_t lo_t = clamp64(ceil_div(p.pad_left - sd, p.stride_w), 0, Wo);
              const int64_t hi_t = clamp64(floor_div(p.W - 1 + p.pad_left - sd, p.stride_w) + 1, lo_t, Wo);
              const int64_t ranges[2][2] = {{lo_t, std::min(ow_lo, hi_t)}, {std::max(ow_hi, lo_t), hi_t}};
              for (const auto& rg : ranges) {
                if (rg[1] <= rg[0]) continue;
                GwTile<T> e = t;
                e.npix = rg[1] - rg[0];
                e.x = xg + ih_lo * xh + (rg[0] * p.stride_w - p.pad_left + sd) * xw;
                e.dy = dyg + (oh_lo * Wo + rg[0]) * kB;
                gw_blocked(tab[gw_index(ocv, nch, 1)], e, edge_buf, ocv * nch * kB);
                for (int64_t oc = 0; oc < ocv * nch; ++oc)
                  for (int j = 0; j < kB; ++j) buf[(oc * nt + tt) * kB + j] += edge_buf[oc * kB + j];
              }
            }
            for (int64_t k = 0; k < nk; ++k)
              for (int64_t ch = 0; ch < nch; ++ch)
                for (int64_t tt = 0; tt < nt; ++tt)
                  dw[((g * Kg + kb0 * kB + k) * p.Cg + c + ch) * RS + r * p.S + s0 + tt] =
                      buf[(((k / kB) * nch + ch) * nt + tt) * kB + k % kB];
          }
        }
      }
    });
  });
  return gw;
}

// The same blocked algorithm as plain loops: packed weights, one block of 8
// output channels at a time, no vectors, no register tile, bounds checks on
// every tap. Tests compare the tuned kernel with it.
at::Tensor direct_naive_conv2d(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view activation) {
  const char* op = "fastconv::direct_naive_conv2d";
  const auto p = check_forward_args(op, input, weight, bias, stride, padding, dilation, groups);
  const auto act = parse_activation(std::string(activation));
  const auto packed = direct_pack_weight(weight, groups);
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), conv_memory_format(input, weight));
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "direct", [&] {
    using T = scalar_t;
    const T* x = input.data_ptr<T>();
    const T* wp = packed.data_ptr<T>();
    const T* bp = has_bias ? b.data_ptr<T>() : nullptr;
    T* y = out.data_ptr<T>();
    const int64_t Kg = p.Kg(), B = packed.size(5), KB = ceil_div(Kg, B);
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t g = 0; g < p.groups; ++g)
        for (int64_t kb = 0; kb < KB; ++kb)
          for (int64_t oh = 0; oh < p.Ho; ++oh)
            for (int64_t ow = 0; ow < p.Wo; ++ow) {
              T acc[kB16] = {};
              for (int64_t c = 0; c < p.Cg; ++c)
                for (int64_t r = 0; r < p.R; ++r) {
                  const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
                  if (ih < 0 || ih >= p.H) continue;
                  for (int64_t s = 0; s < p.S; ++s) {
                    const int64_t iw = ow * p.stride_w - p.pad_left + s * p.dil_w;
                    if (iw < 0 || iw >= p.W) continue;
                    const T xv = x[n * input.stride(0) + (g * p.Cg + c) * input.stride(1) +
                                   ih * input.stride(2) + iw * input.stride(3)];
                    const T* wv = wp + ((((g * KB + kb) * p.Cg + c) * p.R + r) * p.S + s) * B;
                    for (int j = 0; j < B; ++j) acc[j] += wv[j] * xv;
                  }
                }
              for (int j = 0; j < B; ++j) {
                const int64_t k = kb * B + j;
                if (k >= Kg) break;
                const int64_t ko = g * Kg + k;
                y[n * out.stride(0) + ko * out.stride(1) + oh * out.stride(2) + ow * out.stride(3)] =
                    activate(acc[j] + (bp ? bp[ko] : T(0)), act);
              }
            }
  });
  return out;
}

}  // namespace fastconv
