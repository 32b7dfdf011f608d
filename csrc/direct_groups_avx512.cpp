// direct, grouped convolutions with few channels per group, on AVX-512:
// 16 output channels of GPV = 16 / Kg groups per zmm vector (Cg == Kg in
// {2, 4, 8, 16}: ResNeXt's g=32 layers have 4, 8, 16 and 32).
//
// The general direct tile vectorizes over the output channels of one group, so
// a group of 4 channels fills 4 of 16 lanes. Here lane l = k * GPV + gl holds
// output channel k of group gl of a block of GPV groups. Input channel c of
// those GPV groups is then needed in lanes k * GPV + gl for every k: GPV
// values repeated 16 / GPV times, which is one broadcast of GPV contiguous
// floats (vbroadcastf32x2/x4/x8) when the input is stored [.. pixel][c][gl].
// So each call first copies the input once into a zero-padded, group-blocked
// layout xt[N][G/GPV][H+pads][W+pads][Cg][GPV], and the micro-kernel is a
// plain loop of one weight load, PT broadcasts and PT FMAs per (tap, c): no
// border cases, every lane busy. The padding taps read stored zeros, so an Inf
// weight next to the border gives NaN here, as in im2col.
// Tests compare it with the AVX2 direct path and with F.conv2d.
#include <array>
#include <cstring>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "blocking.h"
#include "cpu_features.h"
#include "ops.h"
#include "util.h"

namespace fastconv {

bool direct_groups_avx512_applies(const ConvParams& p, at::ScalarType dtype);
at::Tensor direct_groups_avx512_forward(const at::Tensor& input, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias, const ConvParams& p,
                                        Activation act, at::MemoryFormat fmt);

namespace {

constexpr int kLanes = 16;
constexpr int kMaxPT = int(blocking::kDirectGroupsAvx512PixelTile);

struct GroupsProblem {
  int64_t N, GB, Cg, R, S, Ho, Wo, Hp, Wp;  // GB: blocks of GPV groups; Hp, Wp: padded input
  int64_t sh, sw, dh, dw;
  const float* xt;  // [N][GB][Hp][Wp][Cg][GPV]
  const float* wt;  // [GB][R][S][Cg][16], lane order k * GPV + gl
  const float* bias;  // [GB][16] in channel order, or nullptr
  float* y;
  int64_t yn, yk, yh, yw;
  Activation act;
};

// lane -> channel offset inside a block of 16 channels: lane k * GPV + gl holds
// channel gl * Kg + k.
inline int64_t lane_channel(int64_t lane, int64_t gpv) {
  const int64_t kg = kLanes / gpv;
  return (lane % gpv) * kg + lane / gpv;
}

#if FASTCONV_X86
template <int GPV>
FASTCONV_TARGET_AVX512 __attribute__((always_inline)) inline __m512 broadcast_groups(
    const float* p) {
  if constexpr (GPV == 1) return _mm512_set1_ps(*p);
  if constexpr (GPV == 2) {  // vbroadcastsd: a pure load (vbroadcastf32x2 also takes port 5)
    double d;
    std::memcpy(&d, p, sizeof(d));
    return _mm512_castpd_ps(_mm512_set1_pd(d));
  }
  if constexpr (GPV == 4) return _mm512_broadcast_f32x4(_mm_loadu_ps(p));
  if constexpr (GPV == 8) return _mm512_broadcast_f32x8(_mm256_loadu_ps(p));
}

// One row tile: PT output pixels x 16 channels, the whole (r, s, c) reduction.
template <int GPV, int PT>
FASTCONV_TARGET_AVX512 void groups_tile_avx512(const GroupsProblem& P, const float* xrow,
                                               const float* w, __m512 (&out)[kMaxPT]) {
  __m512 acc[PT];
#pragma GCC unroll 32
  for (int p = 0; p < PT; ++p) acc[p] = _mm512_setzero_ps();
  const int64_t pix = P.Cg * GPV;         // floats per padded input pixel
  const int64_t xp = P.sw * pix;          // between output pixels
  const int64_t xr = P.dh * P.Wp * pix;   // between kernel rows
  const int64_t xs = P.dw * pix;          // between kernel columns
  for (int64_t r = 0; r < P.R; ++r)
    for (int64_t s = 0; s < P.S; ++s) {
      const float* xb = xrow + r * xr + s * xs;
      for (int64_t c = 0; c < P.Cg; ++c, w += kLanes, xb += GPV) {
        const __m512 wv = _mm512_loadu_ps(w);
#pragma GCC unroll 32
        for (int p = 0; p < PT; ++p)
          acc[p] = _mm512_fmadd_ps(wv, broadcast_groups<GPV>(xb + p * xp), acc[p]);
      }
    }
#pragma GCC unroll 32
  for (int p = 0; p < PT; ++p) out[p] = acc[p];
}

template <int GPV>
using TileFn = void (*)(const GroupsProblem&, const float*, const float*, __m512 (&)[kMaxPT]);

template <int GPV, size_t... I>
std::array<TileFn<GPV>, kMaxPT + 1> make_tiles(std::index_sequence<I...>) {
  return {nullptr, &groups_tile_avx512<GPV, int(I) + 1>...};
}

// Writes one tile: lanes to channel order, bias, activation (max(0, v) keeps
// NaN, as torch.relu does), then the output's layout.
FASTCONV_TARGET_AVX512 void store_groups_tile(const GroupsProblem& P, __m512 (&acc)[kMaxPT],
                                              int64_t np, int64_t gpv, int64_t n, int64_t gb,
                                              int64_t oh, int64_t ow0) {
  alignas(64) int32_t perm[kLanes], offs[kLanes];
  for (int ch = 0; ch < kLanes; ++ch) {
    // channel ch = gl * Kg + k comes from lane k * GPV + gl
    const int64_t kg = kLanes / gpv, gl = ch / kg, k = ch % kg;
    perm[ch] = int32_t(k * gpv + gl);
    offs[ch] = int32_t(ch * P.yk);
  }
  const __m512i to_channels = _mm512_load_si512(perm);
  const __m512i lane_offsets = _mm512_load_si512(offs);
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.f);
  const __m512 b = P.bias ? _mm512_loadu_ps(P.bias + gb * kLanes) : zero;
  float* y0 = P.y + n * P.yn + gb * kLanes * P.yk + oh * P.yh + ow0 * P.yw;
  for (int64_t p = 0; p < np; ++p) {
    __m512 v = _mm512_add_ps(_mm512_permutexvar_ps(to_channels, acc[p]), b);
    float* yp = y0 + p * P.yw;
    if (P.act == Activation::SiLU || P.act == Activation::GELU) {
      alignas(64) float tmp[kLanes];
      _mm512_store_ps(tmp, v);
      for (int ch = 0; ch < kLanes; ++ch) yp[ch * P.yk] = activate(tmp[ch], P.act);
      continue;
    }
    if (P.act == Activation::ReLU) v = _mm512_max_ps(zero, v);
    if (P.act == Activation::ReLU6) v = _mm512_min_ps(six, _mm512_max_ps(zero, v));
    if (P.yk == 1)
      _mm512_storeu_ps(yp, v);
    else
      _mm512_i32scatter_ps(yp, lane_offsets, v, 4);
  }
}

// Tasks [begin, end) of (image, group block, block of output rows).
template <int GPV>
FASTCONV_TARGET_AVX512 void run_groups_items(const GroupsProblem& P, int64_t begin, int64_t end) {
  static const auto tiles = make_tiles<GPV>(std::make_index_sequence<kMaxPT>());
  const int64_t RB = ceil_div(P.Ho, blocking::kDirectRowBlock);
  const int64_t w_block = P.R * P.S * P.Cg * kLanes;
  const int64_t x_block = P.Hp * P.Wp * P.Cg * GPV;
  __m512 acc[kMaxPT];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t rb = item % RB, gb = (item / RB) % P.GB, n = item / (RB * P.GB);
      const float* xg = P.xt + (n * P.GB + gb) * x_block;
      const float* wg = P.wt + gb * w_block;
      const int64_t oh1 = std::min(P.Ho, (rb + 1) * blocking::kDirectRowBlock);
      for (int64_t oh = rb * blocking::kDirectRowBlock; oh < oh1; ++oh) {
        const float* xrow = xg + oh * P.sh * P.Wp * P.Cg * GPV;
        for (int64_t ow = 0; ow < P.Wo;) {
          // Near-equal tiles: 56 -> 19, 19, 18 rather than 24, 24, 8.
          const int64_t left = P.Wo - ow, np = ceil_div(left, ceil_div(left, kMaxPT));
          tiles[np](P, xrow + ow * P.sw * P.Cg * GPV, wg, acc);
          store_groups_tile(P, acc, np, GPV, n, gb, oh, ow);
          ow += np;
        }
      }
    }
}

// Rows [begin, end) of xt (items over (n, group block, padded row)): 16
// channels of a pixel in one zmm, reordered from channel (gl * Cg + c) to
// (c * GPV + gl) order: a load and a permute for channels_last input, a
// gather of the 16 planes for any other layout.
FASTCONV_TARGET_AVX512 void pack_input_rows(const at::Tensor& input, const ConvParams& p,
                                            int64_t gpv, int64_t Hp, int64_t Wp, float* xt,
                                            int64_t begin, int64_t end) {
  const int64_t GB = p.groups / gpv, Cg = p.Cg;
  const float* x = input.data_ptr<float>();
  const Strides4 xs(input);
  alignas(64) int32_t perm[kLanes], offs[kLanes];
  for (int j = 0; j < kLanes; ++j) {  // out lane j = c * GPV + gl <- channel gl * Cg + c
    const int64_t c = j / gpv, gl = j % gpv;
    perm[j] = int32_t(gl * Cg + c);
    offs[j] = int32_t((gl * Cg + c) * xs.c);
  }
  const __m512i to_lanes = _mm512_load_si512(perm);
  const __m512i planes = _mm512_load_si512(offs);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t item = begin; item < end; ++item) {
    const int64_t hp = item % Hp, gb = (item / Hp) % GB, n = item / (Hp * GB);
    float* o = xt + item * Wp * kLanes;
    const int64_t ih = hp - p.pad_top;
    if (ih < 0 || ih >= p.H) {
      for (int64_t wp = 0; wp < Wp; ++wp) _mm512_storeu_ps(o + wp * kLanes, zero);
      continue;
    }
    const float* row = x + n * xs.n + gb * kLanes * xs.c + ih * xs.h;
    for (int64_t wp = 0; wp < Wp; ++wp) {
      const int64_t iw = wp - p.pad_left;
      __m512 v = zero;
      if (iw >= 0 && iw < p.W) {
        v = xs.c == 1 ? _mm512_permutexvar_ps(to_lanes, _mm512_loadu_ps(row + iw * xs.w))
                      : _mm512_i32gather_ps(planes, row + iw * xs.w, 4);
      }
      _mm512_storeu_ps(o + wp * kLanes, v);
    }
  }
}

template <int GPV>
void run_groups(const GroupsProblem& P) {
  const int64_t RB = ceil_div(P.Ho, blocking::kDirectRowBlock);
  at::parallel_for(0, P.N * P.GB * RB, 1,
                   [&](int64_t begin, int64_t end) { run_groups_items<GPV>(P, begin, end); });
}
#endif

int64_t groups_per_vector(const ConvParams& p) { return kLanes / p.Kg(); }

}  // namespace

bool direct_groups_avx512_applies(const ConvParams& p, at::ScalarType dtype) {
  if (!FASTCONV_X86 || dtype != at::kFloat || !use_avx512() || p.groups < 2) return false;
  const int64_t kg = p.Kg();
  if (kg != p.Cg || (kg != 2 && kg != 4 && kg != 8 && kg != 16)) return false;
  return p.groups % (kLanes / kg) == 0 && p.N * p.Ho * p.Wo > 0;
}

at::Tensor direct_groups_avx512_forward(const at::Tensor& input, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias, const ConvParams& p,
                                        Activation act, at::MemoryFormat fmt) {
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), fmt);
#if FASTCONV_X86
  const int64_t gpv = groups_per_vector(p), GB = p.groups / gpv, Cg = p.Cg;
  const int64_t Hp = p.H + p.pad_top + p.pad_bottom, Wp = p.W + p.pad_left + p.pad_right;
  // Input, zero-padded and group-blocked: [N][GB][Hp][Wp][Cg][GPV].
  auto xt_t = at::empty({p.N, GB, Hp, Wp, Cg, gpv}, input.options());
  float* xt = xt_t.data_ptr<float>();
  TORCH_CHECK(input.stride(1) * (kLanes - 1) < (int64_t(1) << 31),
              "fastconv::direct_conv2d: input plane too large for the grouped AVX-512 path");
  at::parallel_for(0, p.N * GB * Hp, 1, [&](int64_t begin, int64_t end) {
    pack_input_rows(input, p, gpv, Hp, Wp, xt, begin, end);
  });
  // Weights [GB][R][S][Cg][16] in lane order; bias [GB][16] in channel order.
  auto wt_t = at::empty({GB, p.R, p.S, Cg, kLanes}, weight.options());
  float* wt = wt_t.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const Strides4 ws(weight);
  for (int64_t gb = 0; gb < GB; ++gb)
    for (int64_t r = 0; r < p.R; ++r)
      for (int64_t s = 0; s < p.S; ++s)
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t l = 0; l < kLanes; ++l)
            *wt++ = w[ws.at(gb * kLanes + lane_channel(l, gpv), c, r, s)];
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  GroupsProblem P;
  P.N = p.N; P.GB = GB; P.Cg = Cg; P.R = p.R; P.S = p.S; P.Ho = p.Ho; P.Wo = p.Wo;
  P.Hp = Hp; P.Wp = Wp; P.sh = p.stride_h; P.sw = p.stride_w; P.dh = p.dil_h; P.dw = p.dil_w;
  P.xt = xt;
  P.wt = wt_t.data_ptr<float>();
  P.bias = has_bias ? b.data_ptr<float>() : nullptr;
  P.y = out.data_ptr<float>();
  P.yn = out.stride(0); P.yk = out.stride(1); P.yh = out.stride(2); P.yw = out.stride(3);
  P.act = act;
  TORCH_CHECK(P.yk * (kLanes - 1) < (int64_t(1) << 31),
              "fastconv::direct_conv2d: output plane too large for the grouped AVX-512 path");
  switch (gpv) {
    case 1: run_groups<1>(P); break;
    case 2: run_groups<2>(P); break;
    case 4: run_groups<4>(P); break;
    default: run_groups<8>(P); break;
  }
#endif
  return out;
}

}  // namespace fastconv
