// 1x1 convolutions as our own packed GEMM on AVX-512 (float32, groups 1).
//
// A 1x1 conv is one GEMM over the pixels P = N·Ho·Wo (strided layers read a
// gathered copy of the input):
//   channels_last: y[P][K] = x[P][C] · Wᵀ[C][K]   (register tile 14 pixels x 32 channels)
//   NCHW, per image: y[K][HW] = W[K][C] · x[C][HW] (register tile 8 channels x 48 pixels)
// The weight is packed once into panels [ceil(K/32)][C][32] (32 output
// channels innermost, zero-padded): the channels_last tile loads two zmm of
// it per input channel, the NCHW tile broadcasts 8 of its lanes. Modules cache
// the panels (pointwise_pack_weight, run by pointwise_conv2d_packed). A
// functional call on few pixels (im2col_conv2d, pointwise_gemm_forward_unpacked)
// has each channels_last task pack its panel from the weight, 16x16 blocks
// transposed in registers, into a per-thread buffer: the weight is read once
// per group of pixel blocks, as MKL's own packing reads it, where a whole
// packed copy up front cost about as much as the GEMM at 7x7.
//
// Measured (1 thread, ResNet-50's 1x1 layers, dev/cpu/pointwise_gemm.py): on
// cached panels the channels_last tile runs 168-203 GFLOP/s (70-82% of the FMA
// peak); MKL's sgemm on the same matrices 126-207, weakest at 7x7 (126-146)
// where ours holds 168-182. At larger planes they tie, and MKL's NCHW beats
// our 8x48 tile (105-171), so that tile only serves NCHW planes > 49 pixels
// handed to the packed op directly.
//
// Cache blocking: the reduction runs in blocks of kGemmAvx512KC input
// channels. channels_last: a 32-channel panel block (KC x 32 floats, 32 KiB)
// stays in L1 while the tiles of a block of kGemmAvx512NhwcPixelBlock pixels
// (their KC-long input rows, L2) stream past it. NCHW: the input block
// (KC x up to kGemmAvx512NchwPixelBlock pixels) stays in L2 while the panel's
// four 8-channel tiles read it.
//
// Each tile starts from the partial sums already in the output for every KC
// block after the first, so every output element is one FMA chain over the
// input channels in order: the result depends neither on the blocking nor on
// the thread count (tasks own disjoint output tiles).
//
// pointwise_gemm_naive at the bottom is the plain loop nest over the same panels.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "blocking.h"
#include "check.h"
#include "cpu_features.h"
#include "ops.h"
#include "pointwise_gemm.h"
#include "util.h"

namespace fastconv {

namespace {

using namespace blocking;

constexpr int kLanes = 16;
constexpr int64_t kNR = kGemmAvx512PanelWidth;          // 32: channels per panel
constexpr int kRows = int(kGemmAvx512NhwcRows);          // 14 pixels (channels_last)
constexpr int kChans = int(kGemmAvx512NchwChannels);     // 8 channels (NCHW)
constexpr int kPixVecs = int(kGemmAvx512NchwPixelVecs);  // 3 vectors of pixels (NCHW)
static_assert(kNR == 2 * kLanes, "the channels_last tile holds a panel in two zmm");
static_assert(kNR % kChans == 0, "NCHW tiles cut a panel into whole channel tiles");

// The 1x1 conv as a GEMM: input [N][C][HW] or [P][C] (canonical, gathered for
// stride > 1), output likewise.
struct Gemm {
  int64_t N, C, K, HW;
  const float* x;
  const float* w;      // panels [KP][C][32], or nullptr: then
  const float* plain;  // the weight [K][C] (rows C apart), packed per task
  float* y;
  const float* bias;  // [K] or nullptr
  Activation act;
};

#if FASTCONV_X86
FASTCONV_TARGET_AVX512 inline __m512 epilogue_vec(__m512 v, __m512 b, Activation act) {
  v = _mm512_add_ps(v, b);
  // max(0, v) returns v when v is NaN, as torch.relu does.
  if (act == Activation::ReLU) v = _mm512_max_ps(_mm512_setzero_ps(), v);
  if (act == Activation::ReLU6)
    v = _mm512_min_ps(_mm512_set1_ps(6.f), _mm512_max_ps(_mm512_setzero_ps(), v));
  return v;
}

inline bool scalar_activation(Activation act) {
  return act == Activation::SiLU || act == Activation::GELU;
}

inline __mmask16 lanes_mask(int64_t n) {
  return n >= kLanes ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// r[i][j] <- r[j][i]: three rounds of shuffles (pairs of lanes, 128-bit
// quarters, then halves).
FASTCONV_TARGET_AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}

// One panel from the plain weight: panel[c][j] = w[j][c] for the kv <= 32
// rows of w (ldw apart), zero for j >= kv; C input channels. 16x16 blocks
// through registers (the scalar loop of pointwise_pack_panels cost about as
// much as the GEMM at 7x7).
FASTCONV_TARGET_AVX512 void pack_panel(const float* w, int64_t ldw, int64_t kv, int64_t C,
                                       float* panel) {
  for (int h = 0; h < 2; ++h) {
    const int64_t rows = std::min<int64_t>(kLanes, std::max<int64_t>(0, kv - h * kLanes));
    const float* wh = w + h * kLanes * ldw;
    for (int64_t c = 0; c < C; c += kLanes) {
      const int64_t cn = std::min<int64_t>(kLanes, C - c);
      const __mmask16 cm = lanes_mask(cn);
      __m512 r[kLanes];
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(cm, wh + i * ldw + c) : _mm512_setzero_ps();
      transpose16(r);
      float* o = panel + c * kNR + h * kLanes;
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i)
        if (i < cn) _mm512_storeu_ps(o + i * kNR, r[i]);
    }
  }
}

// channels_last: M pixels x 32 channels. a: the tile's first input row at the
// block's first channel (rows lda apart); b: the panel at that channel; y: the
// tile's output (rows ldy apart), kv valid channels of 32.
template <int M>
FASTCONV_TARGET_AVX512 void tile_nhwc(int64_t kc, const float* a, int64_t lda, const float* b,
                                      float* y, int64_t ldy, int64_t kv, bool first, bool last,
                                      const float* bias, Activation act) {
  const __mmask16 m0 = lanes_mask(kv), m1 = lanes_mask(kv - kLanes);
  __m512 acc[M][2];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    acc[m][0] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, y + m * ldy);
    acc[m][1] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, y + m * ldy + kLanes);
  }
  for (int64_t k = 0; k < kc; ++k, b += kNR, ++a) {
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + kLanes);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const __m512 av = _mm512_set1_ps(a[m * lda]);
      acc[m][0] = _mm512_fmadd_ps(av, b0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(av, b1, acc[m][1]);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  const __m512 bias0 = last && bias ? _mm512_maskz_loadu_ps(m0, bias) : zero;
  const __m512 bias1 = last && bias ? _mm512_maskz_loadu_ps(m1, bias + kLanes) : zero;
  const Activation vact = last && !scalar_activation(act) ? act : Activation::None;
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    _mm512_mask_storeu_ps(y + m * ldy, m0, epilogue_vec(acc[m][0], bias0, vact));
    _mm512_mask_storeu_ps(y + m * ldy + kLanes, m1, epilogue_vec(acc[m][1], bias1, vact));
  }
  if (last && scalar_activation(act))
    for (int m = 0; m < M; ++m)
      for (int64_t j = 0; j < kv; ++j) y[m * ldy + j] = activate(y[m * ldy + j], act);
}

// NCHW: 8 channels x V vectors of pixels. a: the panel at the block's first
// channel and the tile's first lane (channel c's 8 weights at a + c·32); b: the
// input at (block's first channel, tile's first pixel), rows ldb apart; y: the
// output at (tile's first channel, first pixel), rows ldy apart; kv valid
// channels of 8, pv valid pixels of V·16.
template <int V>
FASTCONV_TARGET_AVX512 void tile_nchw(int64_t kc, const float* a, const float* b, int64_t ldb,
                                      float* y, int64_t ldy, int64_t kv, int64_t pv, bool first,
                                      bool last, const float* bias, Activation act) {
  __mmask16 mask[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) mask[v] = lanes_mask(pv - v * kLanes);
  __m512 acc[kChans][V];
#pragma GCC unroll 8
  for (int m = 0; m < kChans; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      acc[m][v] = first || m >= kv ? _mm512_setzero_ps()
                                   : _mm512_maskz_loadu_ps(mask[v], y + m * ldy + v * kLanes);
  for (int64_t k = 0; k < kc; ++k, a += kNR, b += ldb) {
    __m512 bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) bv[v] = _mm512_maskz_loadu_ps(mask[v], b + v * kLanes);
#pragma GCC unroll 8
    for (int m = 0; m < kChans; ++m) {
      const __m512 av = _mm512_set1_ps(a[m]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[m][v] = _mm512_fmadd_ps(av, bv[v], acc[m][v]);
    }
  }
  const Activation vact = last && !scalar_activation(act) ? act : Activation::None;
  // Fully unrolled (constant m), so acc stays in registers: a runtime index
  // would make GCC keep it on the stack, stored on every step (30% of peak).
#pragma GCC unroll 8
  for (int m = 0; m < kChans; ++m) {
    if (m >= kv) break;
    const __m512 bm = last && bias ? _mm512_set1_ps(bias[m]) : _mm512_setzero_ps();
    float* yr = y + m * ldy;
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      _mm512_mask_storeu_ps(yr + v * kLanes, mask[v], epilogue_vec(acc[m][v], bm, vact));
    if (last && scalar_activation(act))
      for (int64_t j = 0; j < pv; ++j) yr[j] = activate(yr[j], act);
  }
}

using NhwcTile = void (*)(int64_t, const float*, int64_t, const float*, float*, int64_t, int64_t,
                          bool, bool, const float*, Activation);
template <size_t... I>
constexpr std::array<NhwcTile, kRows + 1> nhwc_tiles(std::index_sequence<I...>) {
  return {nullptr, &tile_nhwc<int(I) + 1>...};
}
using NchwTile = void (*)(int64_t, const float*, const float*, int64_t, float*, int64_t, int64_t,
                          int64_t, bool, bool, const float*, Activation);
template <size_t... I>
constexpr std::array<NchwTile, kPixVecs + 1> nchw_tiles(std::index_sequence<I...>) {
  return {nullptr, &tile_nchw<int(I) + 1>...};
}

// Cuts n into pieces of at most `most`, nearly equal (49 -> 13, 12, 12, 12),
// so no tile is a sliver.
inline int64_t next_piece(int64_t left, int64_t most) {
  return ceil_div(left, ceil_div(left, most));
}

// Tasks (pixel block, panel): a task owns y[block][panel's 32 channels].
// Cached panels: a thread runs a pixel block's panels in turn (its input rows
// stay in L2). Plain weights: the pixel blocks are grouped so that a group's
// input rows fit kGemmAvx512UnpackedGroupBytes; within a group tasks run panel
// by panel, and a thread packs a panel into its own buffer when its next task
// needs another one (once per group and panel).
FASTCONV_TARGET_AVX512 void run_nhwc(const Gemm& g) {
  static constexpr auto tiles = nhwc_tiles(std::make_index_sequence<kRows>());
  const int64_t P = g.N * g.HW, KP = ceil_div(g.K, kNR);
  const int64_t MB = ceil_div(P, kGemmAvx512NhwcPixelBlock);
  const int64_t block = ceil_div(P, MB);  // equal blocks
  const bool plain = g.w == nullptr;
  const int64_t group = std::max<int64_t>(
      1, kGemmAvx512UnpackedGroupBytes / (block * g.C * int64_t(sizeof(float))));
  // Task t -> (pixel block, panel).
  auto task = [&](int64_t t) -> std::pair<int64_t, int64_t> {
    if (!plain) return {t / KP, t % KP};
    const int64_t first = t / (group * KP) * group, n = std::min(group, MB - first);
    const int64_t r = t - first * KP;
    return {first + r % n, r / n};
  };
  at::parallel_for(0, MB * KP, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> own(plain ? g.C * kNR : 0);
    int64_t packed = -1, packed_group = -1;
    for (int64_t t = begin; t < end; ++t) {
      const auto [mb, kp] = task(t);
      const int64_t p0 = mb * block, p1 = std::min(P, p0 + block);
      const int64_t k0 = kp * kNR, kv = std::min(kNR, g.K - k0);
      if (plain && (packed != kp || packed_group != mb / group)) {
        pack_panel(g.plain + k0 * g.C, g.C, kv, g.C, own.data());
        packed = kp;
        packed_group = mb / group;
      }
      const float* panel = plain ? own.data() : g.w + kp * g.C * kNR;
      const float* bias = g.bias ? g.bias + k0 : nullptr;
      for (int64_t c0 = 0; c0 < g.C; c0 += kGemmAvx512KC) {
        const int64_t kc = std::min(kGemmAvx512KC, g.C - c0);
        const bool first = c0 == 0, last = c0 + kc == g.C;
        for (int64_t p = p0; p < p1;) {
          const int64_t m = next_piece(p1 - p, kRows);
          tiles[m](kc, g.x + p * g.C + c0, g.C, panel + c0 * kNR, g.y + p * g.K + k0, g.K, kv,
                   first, last, bias, g.act);
          p += m;
        }
      }
    }
  });
}

// Tasks (image, pixel block, panel): a task owns y[n][panel's channels][block].
FASTCONV_TARGET_AVX512 void run_nchw(const Gemm& g) {
  static constexpr auto tiles = nchw_tiles(std::make_index_sequence<kPixVecs>());
  const int64_t KP = ceil_div(g.K, kNR);
  const int64_t MB = ceil_div(g.HW, kGemmAvx512NchwPixelBlock);
  const int64_t block = round_up(ceil_div(g.HW, MB), kLanes);
  const int64_t tile = kPixVecs * kLanes;
  at::parallel_for(0, g.N * MB * KP, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t kp = t % KP, mb = (t / KP) % MB, n = t / (KP * MB);
      const int64_t p0 = mb * block, p1 = std::min(g.HW, p0 + block);
      if (p0 >= p1) continue;
      const float* xn = g.x + n * g.C * g.HW;
      float* yn = g.y + n * g.K * g.HW;
      const float* panel = g.w + kp * g.C * kNR;
      for (int64_t c0 = 0; c0 < g.C; c0 += kGemmAvx512NchwKC) {
        const int64_t kc = std::min(kGemmAvx512NchwKC, g.C - c0);
        const bool first = c0 == 0, last = c0 + kc == g.C;
        // The tile's input block (KC x 48 pixels) stays in L1 across the panel's
        // four 8-channel tiles.
        for (int64_t p = p0; p < p1; p += tile) {
          const int64_t pv = std::min(tile, p1 - p);
          for (int64_t j = 0; j < kNR; j += kChans) {
            const int64_t k0 = kp * kNR + j, kv = std::min<int64_t>(kChans, g.K - k0);
            if (kv <= 0) break;
            tiles[ceil_div(pv, kLanes)](kc, panel + c0 * kNR + j, xn + c0 * g.HW + p, g.HW,
                                        yn + k0 * g.HW + p, g.HW, kv, pv, first, last,
                                        g.bias ? g.bias + k0 : nullptr, g.act);
          }
        }
      }
    }
  });
}
#endif

// The input as the GEMM reads it: canonical in `fmt`, strided layers gathered.
at::Tensor gemm_input(const at::Tensor& input, const ConvParams& p, at::MemoryFormat fmt) {
  at::Tensor x = input;
  if (p.stride_h != 1 || p.stride_w != 1)
    x = x.slice(2, 0, p.H, p.stride_h).slice(3, 0, p.W, p.stride_w);
  // Dims of size > 1 then have the canonical strides the GEMM assumes.
  return x.contiguous(fmt);
}

// weight: the panels, or (plain) the weight itself, canonical [K][C][1][1].
Gemm make_gemm(const ConvParams& p, const at::Tensor& x, const at::Tensor& weight, bool plain,
               const at::Tensor& out, const at::Tensor& bias, Activation act) {
  Gemm g;
  g.N = p.N; g.C = p.C; g.K = p.K; g.HW = p.Ho * p.Wo;
  g.x = x.data_ptr<float>();
  g.w = plain ? nullptr : weight.data_ptr<float>();
  g.plain = plain ? weight.data_ptr<float>() : nullptr;
  g.y = out.data_ptr<float>();
  g.bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
  g.act = act;
  return g;
}

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, bool plain,
                   const c10::optional<at::Tensor>& bias, const ConvParams& p, Activation act,
                   at::MemoryFormat fmt) {
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), fmt);
#if FASTCONV_X86
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  if (fmt == at::MemoryFormat::ChannelsLast) {
    run_nhwc(make_gemm(p, gemm_input(input, p, fmt), weight, plain, out, b, act));
  } else if (p.Ho * p.Wo <= kGemmAvx512NchwViaNhwcMaxPixels) {
    // Small NCHW planes: the channels_last tile on transposed copies (the copies
    // move (C + K)·P floats against 2·C·K·P flops).
    const auto cl = at::MemoryFormat::ChannelsLast;
    auto tmp = at::empty({p.N, p.K, p.Ho, p.Wo}, input.options().memory_format(cl));
    run_nhwc(make_gemm(p, gemm_input(input, p, cl), weight, plain, tmp, b, act));
    out.copy_(tmp);
  } else {
    FASTCONV_CHECK(!plain, "fastconv: the NCHW 1x1 GEMM tile needs packed panels");
    run_nchw(make_gemm(p, gemm_input(input, p, fmt), weight, plain, out, b, act));
  }
#endif
  return out;
}

}  // namespace

bool pointwise_gemm_applies(const ConvParams& p, at::ScalarType dtype) {
  return FASTCONV_X86 && dtype == at::kFloat && use_avx512() && p.groups == 1 && p.R == 1 &&
         p.S == 1 && p.pad_top == 0 && p.pad_bottom == 0 && p.pad_left == 0 &&
         p.pad_right == 0 && p.N * p.Ho * p.Wo * p.K > 0;
}

std::vector<int64_t> pointwise_panels_shape(int64_t K, int64_t C) {
  return {ceil_div(K, kNR), C, kNR};
}

at::Tensor pointwise_pack_panels(const at::Tensor& weight) {
  const int64_t K = weight.size(0), C = weight.size(1), KP = ceil_div(K, kNR);
  auto panels = at::empty(pointwise_panels_shape(K, C), weight.options());
#if FASTCONV_X86
  if (weight.scalar_type() == at::kFloat && use_avx512() && weight.stride(1) == 1) {
    const float* w = weight.data_ptr<float>();
    float* o = panels.data_ptr<float>();
    const int64_t s0 = weight.stride(0);
    at::parallel_for(0, KP, 1, [&](int64_t b, int64_t e) {
      for (int64_t kp = b; kp < e; ++kp)
        pack_panel(w + kp * kNR * s0, s0, std::min(kNR, K - kp * kNR), C, o + kp * C * kNR);
    });
    return panels;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "pointwise_pack_panels", [&] {
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* o = panels.data_ptr<scalar_t>();
    const int64_t s0 = weight.stride(0), s1 = weight.stride(1);
    // Blocks of channels: each weight row is read in runs of kPackChannels
    // (c-outer reads would stride by a whole row, a page apart at C = 2048), and
    // the block's panel rows (kPackChannels x 128 B) stay in L1 while written.
    constexpr int64_t kPackChannels = 64;
    at::parallel_for(0, KP, 1, [&](int64_t b, int64_t e) {
      for (int64_t kp = b; kp < e; ++kp)
        for (int64_t c0 = 0; c0 < C; c0 += kPackChannels) {
          const int64_t c1 = std::min(C, c0 + kPackChannels);
          scalar_t* ob = o + (kp * C) * kNR;
          for (int64_t j = 0; j < kNR; ++j) {
            const int64_t k = kp * kNR + j;
            if (k < K) {
              const scalar_t* row = w + k * s0;
              for (int64_t c = c0; c < c1; ++c) ob[c * kNR + j] = row[c * s1];
            } else {
              for (int64_t c = c0; c < c1; ++c) ob[c * kNR + j] = scalar_t(0);
            }
          }
        }
    });
  });
  return panels;
}

at::Tensor pointwise_unpack_panels(const at::Tensor& panels, int64_t K) {
  const int64_t C = panels.size(1);
  return panels.permute({0, 2, 1}).reshape({-1, C}).slice(0, 0, K).reshape({K, C, 1, 1});
}

at::Tensor pointwise_gemm_forward(const at::Tensor& input, const at::Tensor& panels,
                                  const c10::optional<at::Tensor>& bias, const ConvParams& p,
                                  Activation act, at::MemoryFormat fmt) {
  return forward(input, panels, false, bias, p, act, fmt);
}

bool pointwise_gemm_unpacked_applies(const ConvParams& p, at::ScalarType dtype,
                                     at::MemoryFormat fmt) {
  const bool strided = p.stride_h != 1 || p.stride_w != 1;
  const bool nchw_ok = strided && p.Ho * p.Wo <= kGemmAvx512NchwViaNhwcMaxPixels;
  return pointwise_gemm_applies(p, dtype) && p.N * p.Ho * p.Wo <= kGemmAvx512UnpackedMaxPixels &&
         (fmt == at::MemoryFormat::ChannelsLast || nchw_ok);
}

at::Tensor pointwise_gemm_forward_unpacked(const at::Tensor& input, const at::Tensor& weight,
                                           const c10::optional<at::Tensor>& bias,
                                           const ConvParams& p, Activation act,
                                           at::MemoryFormat fmt) {
  // A 1x1 weight in either memory format is the matrix [K][C].
  return forward(input, weight.contiguous(), true, bias, p, act, fmt);
}

// The plain loop nest over the same panels: y[n][k][pix] = sum_c panel(k, c) · x[n][c][pix].
at::Tensor pointwise_gemm_naive(const at::Tensor& input, const at::Tensor& panels,
                                const c10::optional<at::Tensor>& bias, const ConvParams& p,
                                Activation act, at::MemoryFormat fmt) {
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), fmt);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pointwise_gemm_naive", [&] {
    const scalar_t* w = panels.data_ptr<scalar_t>();
    const scalar_t* x = input.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const Strides4 xs(input), ys(out);
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t k = 0; k < p.K; ++k)
        for (int64_t oh = 0; oh < p.Ho; ++oh)
          for (int64_t ow = 0; ow < p.Wo; ++ow) {
            scalar_t acc = 0;
            for (int64_t c = 0; c < p.C; ++c)
              acc += w[((k / kNR) * p.C + c) * kNR + k % kNR] *
                     x[xs.at(n, c, oh * p.stride_h, ow * p.stride_w)];
            y[ys.at(n, k, oh, ow)] = acc;
          }
  });
  bias_activation_(out, bias, act);
  return out;
}

}  // namespace fastconv
