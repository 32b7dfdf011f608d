// direct on AVX-512 over a zero-padded, channel-blocked copy of the input.
//
// direct.cpp's general tiles read the input where it lies, so each output row
// has border pixels (a one-pixel tile with a clipped tap range) and a deep
// reduction is cut into input-channel blocks with partial sums in between; on
// small planes (7x7, 14x14) and deep layers those costs dominate. Here each call
// first copies the input once into xt[N][GB][H+pads][W+pads][Cg][GPV] (the
// padding becomes stored zeros) and the micro-kernel is one plain loop over
// (r, s, c): OCV weight vectors, PT broadcasts and OCV x PT FMAs per step, no
// border cases, the whole reduction in registers.
//
// GPV (groups per vector) packs narrow groups across lanes: for grouped convs
// with Cg == Kg in {2, 4, 8}, one zmm holds 16 output channels of GPV = 16 / Kg
// groups, lane l = k * GPV + gl (channel k of group gl of the block). Input
// channel c of those groups is then GPV contiguous floats of xt, repeated by one
// broadcast (vbroadcastsd / f32x4 / f32x8, pure loads), so every lane is busy
// where the general tile would fill Kg of 16. Otherwise GPV = 1 and a tile holds
// OCV blocks of 16 output channels of one group (Cg, Kg multiples of 16: dense
// layers and wide groups).
//
// The padding taps read stored zeros, so an Inf weight next to the border gives
// NaN here, as in im2col. Tests compare it with the AVX2 path and F.conv2d.
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "blocking.h"
#include "cpu_features.h"
#include "ops.h"
#include "util.h"

namespace fastconv {

bool direct_blocked_avx512_applies(const ConvParams& p, at::ScalarType dtype);
bool direct_blocked_avx512_weight_applies(int64_t K, int64_t Cg, int64_t groups,
                                          at::ScalarType dtype);
std::vector<int64_t> direct_blocked_avx512_packed_shape(int64_t K, int64_t Cg, int64_t R,
                                                        int64_t S, int64_t groups);
at::Tensor direct_blocked_avx512_pack(const at::Tensor& weight, int64_t groups);
at::Tensor direct_blocked_avx512_unpack(const at::Tensor& packed, at::IntArrayRef weight_size,
                                        int64_t groups);
at::Tensor direct_blocked_avx512_forward(const at::Tensor& input, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias,
                                         const ConvParams& p, Activation act,
                                         at::MemoryFormat fmt);
at::Tensor direct_blocked_avx512_forward_packed(const at::Tensor& input, const at::Tensor& packed,
                                                const c10::optional<at::Tensor>& bias,
                                                const ConvParams& p, Activation act,
                                                at::MemoryFormat fmt);

namespace {

constexpr int kLanes = 16;
constexpr int kMaxPT = int(blocking::kDirectBlockedAvx512PixelTile);
constexpr int kMaxPT2 = int(blocking::kDirectBlockedAvx512PixelTilePair);

struct Layout {
  int64_t gpv;  // groups per vector: 16 / Kg for narrow groups, else 1
  int64_t ocv;  // output-channel vectors per tile
  int64_t GB;   // blocks of gpv groups
  int64_t CB;   // floats per padded input pixel of a group block: Cg * gpv
  int64_t OB;   // output blocks (ocv * 16 channels) per group block
};

// From the weight alone (K, Cg, groups), so the packed weight can be cached.
Layout layout_of(int64_t K, int64_t Cg, int64_t groups) {
  Layout l;
  const int64_t kg = K / groups;
  l.gpv = kg < kLanes ? kLanes / kg : 1;
  l.ocv = l.gpv == 1 && kg % (2 * kLanes) == 0 ? 2 : 1;
  l.GB = groups / l.gpv;
  l.CB = Cg * l.gpv;
  l.OB = kg * l.gpv / (kLanes * l.ocv);
  return l;
}

Layout layout_of(const ConvParams& p) { return layout_of(p.K, p.Cg, p.groups); }

struct Problem {
  Layout L;
  int64_t N, Cg, R, S, Ho, Wo, Hp, Wp, Kg;
  int64_t sh, sw, dh, dw;
  const float* xt;    // [N][GB][Hp][Wp][Cg][GPV]
  const float* wt;    // [GB][OB][R][S][Cg][OCV][16], lanes as above
  const float* bias;  // [GB][OB][OCV][16] in channel order, or nullptr
  float* y;
  int64_t yn, yk, yh, yw;
  Activation act;
};

// Lane l of a narrow-group vector holds channel (l % gpv) * Kg + l / gpv of its block.
inline int64_t lane_channel(int64_t lane, int64_t gpv) {
  return gpv == 1 ? lane : (lane % gpv) * (kLanes / gpv) + lane / gpv;
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

using Acc = __m512[2][kMaxPT];

// One row tile: PT output pixels x OCV x 16 channels, the whole (r, s, c) reduction.
template <int GPV, int OCV, int PT>
FASTCONV_TARGET_AVX512 void blocked_tile_avx512(const Problem& P, const float* xrow,
                                                const float* w, Acc& out) {
  __m512 acc[OCV][PT];
#pragma GCC unroll 4
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 32
    for (int p = 0; p < PT; ++p) acc[o][p] = _mm512_setzero_ps();
  const int64_t pix = P.L.CB;            // floats per padded input pixel
  const int64_t xp = P.sw * pix;         // between output pixels
  const int64_t xr = P.dh * P.Wp * pix;  // between kernel rows
  const int64_t xs = P.dw * pix;         // between kernel columns
  for (int64_t r = 0; r < P.R; ++r)
    for (int64_t s = 0; s < P.S; ++s) {
      const float* xb = xrow + r * xr + s * xs;
      for (int64_t c = 0; c < P.Cg; ++c, w += OCV * kLanes, xb += GPV) {
        __m512 wv[OCV];
#pragma GCC unroll 4
        for (int o = 0; o < OCV; ++o) wv[o] = _mm512_loadu_ps(w + o * kLanes);
#pragma GCC unroll 32
        for (int p = 0; p < PT; ++p) {
          const __m512 xv = broadcast_groups<GPV>(xb + p * xp);
#pragma GCC unroll 4
          for (int o = 0; o < OCV; ++o) acc[o][p] = _mm512_fmadd_ps(wv[o], xv, acc[o][p]);
        }
      }
    }
#pragma GCC unroll 4
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 32
    for (int p = 0; p < PT; ++p) out[o][p] = acc[o][p];
}

using TileFn = void (*)(const Problem&, const float*, const float*, Acc&);

template <int GPV, int OCV, size_t... I>
std::array<TileFn, kMaxPT + 1> make_tiles(std::index_sequence<I...>) {
  std::array<TileFn, kMaxPT + 1> t{};
  auto put = [&](auto w) {
    constexpr int W = decltype(w)::value;
    if constexpr (W <= (OCV == 1 ? kMaxPT : kMaxPT2)) t[W] = &blocked_tile_avx512<GPV, OCV, W>;
  };
  (put(std::integral_constant<int, int(I) + 1>{}), ...);
  return t;
}

// Writes one tile: lanes to channel order, bias, activation (max(0, v) keeps
// NaN, as torch.relu does), then the output's layout.
FASTCONV_TARGET_AVX512 void store_tile(const Problem& P, Acc& acc, int64_t np, int64_t n,
                                       int64_t gb, int64_t ob, int64_t oh, int64_t ow0) {
  const int64_t gpv = P.L.gpv;
  alignas(64) int32_t perm[kLanes], offs[kLanes];
  for (int ch = 0; ch < kLanes; ++ch) {
    // channel ch = gl * Kg + k comes from lane k * GPV + gl
    const int64_t kg = kLanes / gpv, gl = ch / kg, k = ch % kg;
    perm[ch] = int32_t(gpv == 1 ? ch : k * gpv + gl);
    offs[ch] = int32_t(ch * P.yk);
  }
  const __m512i to_channels = _mm512_load_si512(perm);
  const __m512i lane_offsets = _mm512_load_si512(offs);
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.f);
  for (int64_t o = 0; o < P.L.ocv; ++o) {
    const int64_t ch0 = gb * P.Kg * gpv + (ob * P.L.ocv + o) * kLanes;
    const __m512 b = P.bias ? _mm512_loadu_ps(P.bias + ch0) : zero;
    float* y0 = P.y + n * P.yn + ch0 * P.yk + oh * P.yh + ow0 * P.yw;
    for (int64_t p = 0; p < np; ++p) {
      __m512 v = gpv == 1 ? acc[o][p] : _mm512_permutexvar_ps(to_channels, acc[o][p]);
      v = _mm512_add_ps(v, b);
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
}

// Tasks [begin, end) of (image, group block, output block, block of output rows).
template <int GPV, int OCV>
FASTCONV_TARGET_AVX512 void run_items(const Problem& P, int64_t begin, int64_t end) {
  static const auto tiles = make_tiles<GPV, OCV>(std::make_index_sequence<kMaxPT>());
  constexpr int64_t pt_max = OCV == 1 ? kMaxPT : kMaxPT2;
  const Layout& L = P.L;
  const int64_t RB = ceil_div(P.Ho, blocking::kDirectRowBlock);
  const int64_t w_block = P.R * P.S * P.Cg * OCV * kLanes;
  const int64_t x_block = P.Hp * P.Wp * L.CB;
  Acc acc;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t rb = item % RB, ob = (item / RB) % L.OB, gb = (item / (RB * L.OB)) % L.GB,
                  n = item / (RB * L.OB * L.GB);
    const float* xg = P.xt + (n * L.GB + gb) * x_block;
    const float* wg = P.wt + (gb * L.OB + ob) * w_block;
    const int64_t oh1 = std::min(P.Ho, (rb + 1) * blocking::kDirectRowBlock);
    for (int64_t oh = rb * blocking::kDirectRowBlock; oh < oh1; ++oh) {
      const float* xrow = xg + oh * P.sh * P.Wp * L.CB;
      for (int64_t ow = 0; ow < P.Wo;) {
        // Near-equal tiles: 56 -> 19, 19, 18 rather than 24, 24, 8.
        const int64_t left = P.Wo - ow, np = ceil_div(left, ceil_div(left, pt_max));
        tiles[np](P, xrow + ow * P.sw * L.CB, wg, acc);
        store_tile(P, acc, np, n, gb, ob, oh, ow);
        ow += np;
      }
    }
  }
}

template <int GPV, int OCV>
void run(const Problem& P) {
  const int64_t RB = ceil_div(P.Ho, blocking::kDirectRowBlock);
  at::parallel_for(0, P.N * P.L.GB * P.L.OB * RB, 1,
                   [&](int64_t begin, int64_t end) { run_items<GPV, OCV>(P, begin, end); });
}

// Rows [begin, end) of xt (items over (n, group block, padded row)), 16 floats
// at a time: lane j = c * GPV + gl of a chunk holds channel gl * Cg + c of the
// group block (the identity for GPV = 1); a load (and a permute) for
// channels_last input, a gather of 16 planes for any other layout.
FASTCONV_TARGET_AVX512 void pack_input_rows(const at::Tensor& input, const ConvParams& p,
                                            const Layout& L, int64_t Hp, int64_t Wp, float* xt,
                                            int64_t begin, int64_t end) {
  const float* x = input.data_ptr<float>();
  const Strides4 xs(input);
  alignas(64) int32_t perm[kLanes], offs[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    const int64_t c = j / L.gpv, gl = j % L.gpv;
    perm[j] = int32_t(gl * p.Cg + c);
    offs[j] = int32_t(perm[j] * xs.c);
  }
  const __m512i to_lanes = _mm512_load_si512(perm);
  const __m512i planes = _mm512_load_si512(offs);
  const __m512 zero = _mm512_setzero_ps();
  const int64_t chunks = L.CB / kLanes;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t hp = item % Hp, gb = (item / Hp) % L.GB, n = item / (Hp * L.GB);
    float* o = xt + item * Wp * L.CB;
    const int64_t ih = hp - p.pad_top;
    if (ih < 0 || ih >= p.H) {
      for (int64_t i = 0; i < Wp * chunks; ++i) _mm512_storeu_ps(o + i * kLanes, zero);
      continue;
    }
    const float* row = x + n * xs.n + gb * L.CB * xs.c + ih * xs.h;
    for (int64_t wp = 0; wp < Wp; ++wp, o += L.CB) {
      const int64_t iw = wp - p.pad_left;
      const bool inside = iw >= 0 && iw < p.W;
      for (int64_t q = 0; q < chunks; ++q) {
        __m512 v = zero;
        if (inside) {
          const float* src = row + iw * xs.w + q * kLanes * xs.c;
          if (xs.c == 1)
            v = L.gpv == 1 ? _mm512_loadu_ps(src) : _mm512_permutexvar_ps(to_lanes, _mm512_loadu_ps(src));
          else
            v = _mm512_i32gather_ps(planes, src, 4);
        }
        _mm512_storeu_ps(o + q * kLanes, v);
      }
    }
  }
}
#endif

}  // namespace

bool direct_blocked_avx512_weight_applies(int64_t K, int64_t Cg, int64_t groups,
                                          at::ScalarType dtype) {
  if (!FASTCONV_X86 || dtype != at::kFloat || !use_avx512() || groups <= 0 || K % groups)
    return false;
  const int64_t kg = K / groups;
  const bool narrow = groups > 1 && kg == Cg && (kg == 2 || kg == 4 || kg == 8) &&
                      groups % (kLanes / kg) == 0;
  const bool wide = Cg % kLanes == 0 && kg % kLanes == 0 && kg > 0;
  return narrow || wide;
}

bool direct_blocked_avx512_applies(const ConvParams& p, at::ScalarType dtype) {
  return p.N * p.Ho * p.Wo > 0 && direct_blocked_avx512_weight_applies(p.K, p.Cg, p.groups, dtype);
}

std::vector<int64_t> direct_blocked_avx512_packed_shape(int64_t K, int64_t Cg, int64_t R,
                                                        int64_t S, int64_t groups) {
  const Layout L = layout_of(K, Cg, groups);
  return {L.GB, L.OB, R, S, Cg, L.ocv, kLanes};
}

// Weights [GB][OB][R][S][Cg][OCV][16] in lane order; `weight` [K][Cg][R][S], any strides.
at::Tensor direct_blocked_avx512_pack(const at::Tensor& weight, int64_t groups) {
  const int64_t K = weight.size(0), Cg = weight.size(1), R = weight.size(2), S = weight.size(3);
  const Layout L = layout_of(K, Cg, groups);
  auto wt_t = at::empty(direct_blocked_avx512_packed_shape(K, Cg, R, S, groups), weight.options());
  float* wt = wt_t.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const Strides4 ws(weight);
  const int64_t Kg = K / groups;
  at::parallel_for(0, L.GB * L.OB, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t gb = blk / L.OB, ob = blk % L.OB;
      float* o = wt + blk * R * S * Cg * L.ocv * kLanes;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t v = 0; v < L.ocv; ++v)
              for (int64_t l = 0; l < kLanes; ++l) {
                const int64_t k = gb * Kg * L.gpv + (ob * L.ocv + v) * kLanes + lane_channel(l, L.gpv);
                *o++ = w[ws.at(k, c, r, s)];
              }
    }
  });
  return wt_t;
}

// The inverse of direct_blocked_avx512_pack: [K][Cg][R][S].
at::Tensor direct_blocked_avx512_unpack(const at::Tensor& packed, at::IntArrayRef weight_size,
                                        int64_t groups) {
  const int64_t K = weight_size[0], Cg = weight_size[1], R = weight_size[2], S = weight_size[3];
  const Layout L = layout_of(K, Cg, groups);
  auto w_t = at::empty({K, Cg, R, S}, packed.options());
  float* w = w_t.data_ptr<float>();
  const float* wt = packed.data_ptr<float>();
  const int64_t Kg = K / groups;
  for (int64_t blk = 0; blk < L.GB * L.OB; ++blk) {
    const int64_t gb = blk / L.OB, ob = blk % L.OB;
    const float* o = wt + blk * R * S * Cg * L.ocv * kLanes;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t v = 0; v < L.ocv; ++v)
            for (int64_t l = 0; l < kLanes; ++l) {
              const int64_t k = gb * Kg * L.gpv + (ob * L.ocv + v) * kLanes + lane_channel(l, L.gpv);
              w[((k * Cg + c) * R + r) * S + s] = *o++;
            }
  }
  return w_t;
}

at::Tensor direct_blocked_avx512_forward(const at::Tensor& input, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias,
                                         const ConvParams& p, Activation act,
                                         at::MemoryFormat fmt) {
  return direct_blocked_avx512_forward_packed(input, direct_blocked_avx512_pack(weight, p.groups),
                                              bias, p, act, fmt);
}

at::Tensor direct_blocked_avx512_forward_packed(const at::Tensor& input, const at::Tensor& packed,
                                                const c10::optional<at::Tensor>& bias,
                                                const ConvParams& p, Activation act,
                                                at::MemoryFormat fmt) {
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), fmt);
#if FASTCONV_X86
  const Layout L = layout_of(p);
  const int64_t Hp = p.H + p.pad_top + p.pad_bottom, Wp = p.W + p.pad_left + p.pad_right;
  TORCH_CHECK(input.stride(1) * (kLanes - 1) < (int64_t(1) << 31) &&
                  out.stride(1) * (kLanes - 1) < (int64_t(1) << 31),
              "fastconv::direct_conv2d: channel planes too large for the AVX-512 blocked path");
  // Input, zero-padded and channel-blocked: [N][GB][Hp][Wp][Cg][GPV].
  auto xt_t = at::empty({p.N, L.GB, Hp, Wp, L.CB}, input.options());
  float* xt = xt_t.data_ptr<float>();
  at::parallel_for(0, p.N * L.GB * Hp, 1, [&](int64_t begin, int64_t end) {
    pack_input_rows(input, p, L, Hp, Wp, xt, begin, end);
  });
  const float* wt = packed.data_ptr<float>();
  const int64_t Kg = p.Kg();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  Problem P;
  P.L = L;
  P.N = p.N; P.Cg = p.Cg; P.R = p.R; P.S = p.S; P.Ho = p.Ho; P.Wo = p.Wo; P.Kg = Kg;
  P.Hp = Hp; P.Wp = Wp; P.sh = p.stride_h; P.sw = p.stride_w; P.dh = p.dil_h; P.dw = p.dil_w;
  P.xt = xt;
  P.wt = wt;
  P.bias = has_bias ? b.data_ptr<float>() : nullptr;
  P.y = out.data_ptr<float>();
  P.yn = out.stride(0); P.yk = out.stride(1); P.yh = out.stride(2); P.yw = out.stride(3);
  P.act = act;
  if (L.gpv == 8) run<8, 1>(P);
  else if (L.gpv == 4) run<4, 1>(P);
  else if (L.gpv == 2) run<2, 1>(P);
  else if (L.ocv == 2) run<1, 2>(P);
  else run<1, 1>(P);
#endif
  return out;
}

}  // namespace fastconv
