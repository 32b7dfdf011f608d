// direct on AVX-512 over zero-padded, channel-blocked copies of input rows.
//
// direct.cpp's general tiles read the input where it lies, so each output row
// has border pixels (a one-pixel tile with a clipped tap range) and a deep
// reduction is cut into input-channel blocks with partial sums in between; on
// small planes (7x7, 14x14) and deep layers those costs dominate. Here each task
// first copies the input rows its output rows read into [rows][W+pads][Cg][GPV]
// (the padding becomes stored zeros; a pixel of 4k lines gets one line more, so
// a tile's pixels spread over L1's sets) and the micro-kernel is one plain loop
// over (channel block, r, s, c): OCV weight vectors, PT broadcasts and OCV x PT
// FMAs per step, no border cases, the whole reduction in registers.
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
#include <algorithm>
#include <climits>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

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

constexpr int kLanes = 16;
constexpr int kMaxPT = int(blocking::kDirectBlockedAvx512PixelTile);
constexpr int kMaxPT2 = int(blocking::kDirectBlockedAvx512PixelTilePair);

struct Layout {
  int64_t gpv;  // groups per vector: 16 / Kg for narrow groups, else 1
  int64_t ocv;  // output-channel vectors per tile
  int64_t GB;   // blocks of gpv groups
  int64_t CB;   // input floats per padded pixel of a group block: Cg * gpv
  int64_t PS;   // floats between packed input pixels: CB, plus a line where CB spans 4k lines
  int64_t OB;   // output blocks (ocv * 16 channels) per group block
  int64_t cbn;  // input channels per block of the packed weight: min(Cg, 16)
  int64_t cpp;  // input channels per pass of the tiles (whole blocks, kDirectBlockedAvx512PanelBytes)
};

Layout layout_of(const ConvParams& p) {
  Layout l;
  const int64_t kg = p.Kg();
  l.gpv = kg < kLanes ? kLanes / kg : 1;
  l.ocv = l.gpv == 1 && kg % (2 * kLanes) == 0 ? 2 : 1;
  l.GB = p.groups / l.gpv;
  l.CB = p.Cg * l.gpv;
  l.PS = l.CB % (4 * kLanes) ? l.CB : l.CB + blocking::kDirectBlockedAvx512PixelPad;
  l.OB = kg * l.gpv / (kLanes * l.ocv);
  l.cbn = std::min<int64_t>(p.Cg, blocking::kDirectBlockedAvx512CinBlock);
  const int64_t per_channel = p.R * p.S * l.ocv * kLanes * int64_t(sizeof(float));
  l.cpp = std::min(p.Cg, std::max<int64_t>(1, blocking::kDirectBlockedAvx512PanelBytes / per_channel /
                                                  l.cbn) * l.cbn);
  return l;
}

// Where pack_rows reads a tensor from: its data and strides, the plane size,
// the padding put before it, and the channels of a group (whose lanes interleave).
struct PackSrc {
  const float* x;
  Strides4 xs;
  int64_t H, W, pad_top, pad_left, cg;
};

struct Problem {
  Layout L;
  int64_t N, Cg, R, S, Ho, Wo, Hp, Wp, Kg;
  int64_t sh, sw, dh, dw;
  PackSrc x;          // the input, packed per task into [rows][Wp][Cg][GPV]
  const float* wt;    // [GB][OB][Cg/cbn][R][S][cbn][OCV][16], lanes as above
  const float* bias;  // [GB][OB][OCV][16] in channel order, or nullptr
  float* y;
  int64_t yn, yk, yh, yw;
  Activation act;
};

// Output rows per task: near-equal blocks of at most kDirectBlockedAvx512RowBlock,
// one block more where the tasks (planes x blocks) would be odd, so two threads get
// equal shares (56 rows of one image: 8 x 7, not 7 x 8 split 4 + 3).
inline int64_t blocked_row_block(int64_t Ho, int64_t planes) {
  int64_t blocks = ceil_div(Ho, blocking::kDirectBlockedAvx512RowBlock);
  if (planes * blocks % 2 && blocks < Ho) ++blocks;
  return ceil_div(Ho, blocks);
}

// Lane l of a narrow-group vector holds channel (l % gpv) * Kg + l / gpv of its block.
inline int64_t lane_channel(int64_t lane, int64_t gpv) {
  return gpv == 1 ? lane : (lane % gpv) * (kLanes / gpv) + lane / gpv;
}

#if FASTCONV_X86
// Zeros in the pixels [wp0, wp1) of a packed row (chunks vectors each, ps floats apart).
FASTCONV_TARGET_AVX512 void zero_pixels(float* o, int64_t wp0, int64_t wp1, int64_t ps,
                                        int64_t chunks) {
  for (int64_t wp = wp0; wp < wp1; ++wp)
    for (int64_t q = 0; q < chunks; ++q) _mm512_storeu_ps(o + wp * ps + q * kLanes, _mm512_setzero_ps());
}

// Padded rows [hp0, hp1) of image n, group block gb of src into out
// ([hp][Wp][ps] floats, CB of them a pixel), 16 floats at a time: lane j =
// c * GPV + gl of a chunk holds channel gl * cg + c of the group block (the identity for GPV = 1); a
// load (and a permute) for channels_last input, a gather of 16 planes for any
// other layout. The forward packs the input this way, grad_weight the input and
// grad_output (whose lanes then match the packed weight's).
FASTCONV_TARGET_AVX512 void pack_rows(const PackSrc& src, int64_t gpv, int64_t CB, int64_t ps,
                                      int64_t Wp, int64_t n, int64_t gb, int64_t hp0, int64_t hp1,
                                      float* out) {
  const Strides4& xs = src.xs;
  alignas(64) int32_t perm[kLanes], offs[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    const int64_t c = j / gpv, gl = j % gpv;
    perm[j] = int32_t(gl * src.cg + c);
    offs[j] = int32_t(perm[j] * xs.c);
  }
  const __m512i to_lanes = _mm512_load_si512(perm);
  const __m512i planes = _mm512_load_si512(offs);
  const int64_t chunks = CB / kLanes;
  for (int64_t hp = hp0; hp < hp1; ++hp) {
    float* o = out + (hp - hp0) * Wp * ps;
    const int64_t ih = hp - src.pad_top;
    if (ih < 0 || ih >= src.H) {
      zero_pixels(o, 0, Wp, ps, chunks);
      continue;
    }
    const float* row = src.x + n * xs.n + gb * CB * xs.c + ih * xs.h;
    // Columns [w0, w1) of the padded row hold input; the rest is padding.
    const int64_t w0 = std::min(src.pad_left, Wp), w1 = std::min(src.pad_left + src.W, Wp);
    zero_pixels(o, 0, w0, ps, chunks);
    zero_pixels(o, w1, Wp, ps, chunks);
    o += w0 * ps;
    const float* px = row;
    if (xs.c == 1 && gpv == 1) {
      for (int64_t wp = w0; wp < w1; ++wp, o += ps, px += xs.w)
        for (int64_t q = 0; q < chunks; ++q)
          _mm512_storeu_ps(o + q * kLanes, _mm512_loadu_ps(px + q * kLanes));
    } else if (xs.c == 1) {
      for (int64_t wp = w0; wp < w1; ++wp, o += ps, px += xs.w)
        for (int64_t q = 0; q < chunks; ++q)
          _mm512_storeu_ps(o + q * kLanes,
                           _mm512_permutexvar_ps(to_lanes, _mm512_loadu_ps(px + q * kLanes)));
    } else {
      for (int64_t wp = w0; wp < w1; ++wp, o += ps, px += xs.w)
        for (int64_t q = 0; q < chunks; ++q)
          _mm512_storeu_ps(o + q * kLanes, _mm512_i32gather_ps(planes, px + q * kLanes * xs.c, 4));
    }
  }
}
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

// A tile's partial sums between passes: [OCV][PT][16] floats.
constexpr int64_t kSlot = 2 * kMaxPT2 * kLanes;
static_assert(kMaxPT <= 2 * kMaxPT2, "a one-vector tile fits a slot");

// One tile: PT output pixels (ROWS rows of PT / ROWS) x OCV x 16 channels over nb
// blocks of cbn input channels (one pass), starting from the partial sums in part
// (or zero) and leaving them there. Within a block (r, s, c): its input lines stay
// in L1 across the taps. The plain loop nest it tiles, over the passes of a task,
// (pixel p at output row oh + p / (PT/ROWS), column ow + p % (PT/ROWS)):
//
//   for cb, r, s, c in block cb, o, pixel p, lane l:
//     acc[o][p][l] += w[cb][r][s][c][o][l] * xt[oh*sh + r*dh][(ow + p)*sw + s*dw][cb*cbn + c][l % GPV]
//
// Two rows per tile where a row is at most half a tile (7x7 planes: 2 x 7 pixels,
// not 7), so each weight vector loaded feeds twice the FMAs.
template <int GPV, int OCV, int PT, int ROWS>
FASTCONV_TARGET_AVX512 void blocked_tile_avx512(const Problem& P, const float* xrow,
                                                const float* w, int64_t nb, float* part,
                                                bool load) {
  constexpr int PW = PT / ROWS;  // pixels per row
  __m512 acc[OCV][PT];
#pragma GCC unroll 4
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 32
    for (int p = 0; p < PT; ++p)
      acc[o][p] = load ? _mm512_loadu_ps(part + (o * PT + p) * kLanes) : _mm512_setzero_ps();
  const int64_t pix = P.L.PS;            // floats between padded input pixels
  const int64_t xp = P.sw * pix;         // between output pixels
  const int64_t xr = P.dh * P.Wp * pix;  // between kernel rows
  const int64_t xs = P.dw * pix;         // between kernel columns
  const int64_t xo = P.sh * P.Wp * pix;  // between the tile's output rows
  const int64_t cbn = P.L.cbn;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t r = 0; r < P.R; ++r)
      for (int64_t s = 0; s < P.S; ++s) {
        const float* xb = xrow + r * xr + s * xs + b * cbn * GPV;
        for (int64_t c = 0; c < cbn; ++c, w += OCV * kLanes, xb += GPV) {
          __m512 wv[OCV];
#pragma GCC unroll 4
          for (int o = 0; o < OCV; ++o) wv[o] = _mm512_loadu_ps(w + o * kLanes);
#pragma GCC unroll 32
          for (int p = 0; p < PT; ++p) {
            const __m512 xv = broadcast_groups<GPV>(xb + (p / PW) * xo + (p % PW) * xp);
#pragma GCC unroll 4
            for (int o = 0; o < OCV; ++o) acc[o][p] = _mm512_fmadd_ps(wv[o], xv, acc[o][p]);
          }
        }
      }
#pragma GCC unroll 4
  for (int o = 0; o < OCV; ++o)
#pragma GCC unroll 32
    for (int p = 0; p < PT; ++p) _mm512_storeu_ps(part + (o * PT + p) * kLanes, acc[o][p]);
}

using TileFn = void (*)(const Problem&, const float*, const float*, int64_t, float*, bool);

// Tiles indexed by pixels per row: ROWS rows of W pixels, null past the register budget.
template <int GPV, int OCV, int ROWS, size_t... I>
std::array<TileFn, kMaxPT + 1> make_tiles(std::index_sequence<I...>) {
  std::array<TileFn, kMaxPT + 1> t{};
  auto put = [&](auto w) {
    constexpr int W = decltype(w)::value;
    if constexpr (ROWS * W <= (OCV == 1 ? kMaxPT : kMaxPT2))
      t[W] = &blocked_tile_avx512<GPV, OCV, ROWS * W, ROWS>;
  };
  (put(std::integral_constant<int, int(I) + 1>{}), ...);
  return t;
}

// Writes pixels [p0, p0 + np) of a tile of pt (its sums in part) to output row
// oh from column ow0: lanes to channel order, bias, activation (max(0, v) keeps
// NaN, as torch.relu does), then the output's layout.
FASTCONV_TARGET_AVX512 void store_tile(const Problem& P, const float* part, int64_t pt,
                                       int64_t p0, int64_t np, int64_t n, int64_t gb,
                                       int64_t ob, int64_t oh, int64_t ow0) {
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
      const __m512 a = _mm512_loadu_ps(part + (o * pt + p0 + p) * kLanes);
      __m512 v = gpv == 1 ? a : _mm512_permutexvar_ps(to_channels, a);
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

// Tasks [begin, end) of (image, block of output rows, group block). Each task
// first packs the padded input rows its block reads into buf (L2-sized), so no
// padded copy of the whole input is made (on stride-2 layers that copy cost more
// than the tiles: ResNeXt layer2 s2 NHWC N=8, a 27 MB copy), then runs every
// output block over them in passes over the input channels: a pass's weight
// panel (kDirectBlockedAvx512PanelBytes) stays in L1 across all the task's tiles
// while their partial sums wait in part, so the weights come from L2 once per
// pass, not once per tile (256 channels, 3x3: a 288 KiB block per 14-pixel tile).
// The sums see the channels in the same order whatever the passes. Group blocks
// innermost: in channels_last the tasks of one row block read (and write) whole
// cache lines of the same pixels one after another, not 64 bytes of every C * 4
// per pass over the image.
template <int GPV, int OCV>
FASTCONV_TARGET_AVX512 void run_items(const Problem& P, int64_t begin, int64_t end,
                                      float* buf, float* part) {
  static const auto tiles = make_tiles<GPV, OCV, 1>(std::make_index_sequence<kMaxPT>());
  static const auto pairs = make_tiles<GPV, OCV, 2>(std::make_index_sequence<kMaxPT>());
  constexpr int64_t pt_max = OCV == 1 ? kMaxPT : kMaxPT2;
  const bool two_rows = 2 * P.Wo <= pt_max;
  const Layout& L = P.L;
  const int64_t rows_per_task = blocked_row_block(P.Ho, P.N * L.GB);
  const int64_t RB = ceil_div(P.Ho, rows_per_task);
  const int64_t taps_c = P.R * P.S * OCV * kLanes;  // weight floats per input channel
  for (int64_t item = begin; item < end; ++item) {
    const int64_t gb = item % L.GB, rb = (item / L.GB) % RB, n = item / (L.GB * RB);
    const int64_t oh0 = rb * rows_per_task, oh1 = std::min(P.Ho, oh0 + rows_per_task);
    const int64_t hp0 = oh0 * P.sh, hp1 = (oh1 - 1) * P.sh + (P.R - 1) * P.dh + 1;
    pack_rows(P.x, L.gpv, L.CB, L.PS, P.Wp, n, gb, hp0, hp1, buf);
    for (int64_t ob = 0; ob < L.OB; ++ob)
      for (int64_t c0 = 0; c0 < P.Cg; c0 += L.cpp) {
        const float* wp = P.wt + (gb * L.OB + ob) * P.Cg * taps_c + c0 * taps_c;
        const int64_t nb = std::min(L.cpp, P.Cg - c0) / L.cbn;
        const bool load = c0 > 0, last = c0 + L.cpp >= P.Cg;
        float* slot = part;
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const float* xrow = buf + (oh * P.sh - hp0) * P.Wp * L.PS + c0 * GPV;
          if (two_rows && oh + 1 < oh1) {
            pairs[P.Wo](P, xrow, wp, nb, slot, load);
            if (last) {
              store_tile(P, slot, 2 * P.Wo, 0, P.Wo, n, gb, ob, oh, 0);
              store_tile(P, slot, 2 * P.Wo, P.Wo, P.Wo, n, gb, ob, oh + 1, 0);
            }
            ++oh;
            slot += kSlot;
            continue;
          }
          for (int64_t ow = 0; ow < P.Wo; slot += kSlot) {
            // Near-equal tiles: 56 -> 19, 19, 18 rather than 24, 24, 8.
            const int64_t left = P.Wo - ow, np = ceil_div(left, ceil_div(left, pt_max));
            tiles[np](P, xrow + ow * P.sw * L.PS, wp, nb, slot, load);
            if (last) store_tile(P, slot, np, 0, np, n, gb, ob, oh, ow);
            ow += np;
          }
        }
      }
  }
}

template <int GPV, int OCV>
void run(const Problem& P) {
  constexpr int64_t pt_max = OCV == 1 ? kMaxPT : kMaxPT2;
  const int64_t rows_per_task = blocked_row_block(P.Ho, P.N * P.L.GB);
  const int64_t RB = ceil_div(P.Ho, rows_per_task);
  const int64_t buf_rows = (rows_per_task - 1) * P.sh + (P.R - 1) * P.dh + 1;
  const int64_t slots = rows_per_task * ceil_div(P.Wo, pt_max);
  at::parallel_for(0, P.N * P.L.GB * RB, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(buf_rows * P.Wp * P.L.PS), part(slots * kSlot);
    run_items<GPV, OCV>(P, begin, end, buf.data(), part.data());
  });
}

// Packs the weights of output block ob of group block gb into
// [Cg/cbn][R][S][cbn][OCV][16] (lane order; a pass's panel is contiguous), a gather of 16 output channels per
// (r, s, c); taps says where each (channel, tap) lies in weight (header).
FASTCONV_TARGET_AVX512 void pack_weight_block(const at::Tensor& weight, const ConvParams& p,
                                              const Layout& L, const WeightTaps& taps,
                                              int64_t gb, int64_t ob, float* o) {
  const float* w = weight.data_ptr<float>();
  const Strides4 ws(weight);
  const bool flip = taps.transposed;
  const int64_t Kg = p.Kg();
  int64_t off[2][kLanes], lo = INT64_MAX, hi = INT64_MIN;
  for (int64_t v = 0; v < L.ocv; ++v)
    for (int64_t l = 0; l < kLanes; ++l) {
      const int64_t k = gb * Kg * L.gpv + (ob * L.ocv + v) * kLanes + lane_channel(l, L.gpv);
      off[v][l] = flip ? (k / Kg) * p.Cg * ws.n + (k % Kg) * ws.c : k * ws.n;
      lo = std::min(lo, off[v][l]);
      hi = std::max(hi, off[v][l]);
    }
  FASTCONV_CHECK(hi - lo < (int64_t(1) << 31), "fastconv::direct_conv2d: weight strides too large "
              "for the AVX-512 blocked path");
  __m512i lanes[2];
  for (int64_t v = 0; v < L.ocv; ++v) {
    alignas(64) int32_t rel[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) rel[l] = int32_t(off[v][l] - lo);
    lanes[v] = _mm512_load_si512(rel);
  }
  const int64_t cs = flip ? ws.n : ws.c;  // between input channels of this problem
  for (int64_t cb = 0; cb < p.Cg; cb += L.cbn)
    for (int64_t r = 0; r < p.R; ++r)
      for (int64_t s = 0; s < p.S; ++s) {
        const int64_t wr = taps.rows.empty() ? r : taps.rows[r];
        const int64_t wc = taps.cols.empty() ? s : taps.cols[s];
        const float* wrs = w + lo + wr * ws.h + wc * ws.w;
        for (int64_t c = cb; c < cb + L.cbn; ++c)
          for (int64_t v = 0; v < L.ocv; ++v, o += kLanes)
            _mm512_storeu_ps(o, _mm512_i32gather_ps(lanes[v], wrs + c * cs, 4));
      }
}

// grad_weight over the same packed operands: the input as the forward packs it
// ([Hp][Wp][Cg][GPV], zero padding stored) and grad_output packed in the weight's
// lane order ([Ho][Wo][Kg * GPV], lane l = k * GPV + gl), one image of one group
// block at a time (L2-sized). Lanes of grad_weight then pair exactly as in the
// forward: a grad_output vector times a broadcast of channel c of GPV groups.
// The plain loop nest it tiles, per (group block gb, output block ob):
//
//   for n, oh, ow, r, s, c, o, lane l:
//     gwl[r][s][c][o][l] += dyp[n][oh][ow][ob][o][l] * xt[n][oh*sh + r*dh][ow*sw + s*dw][c][l % GPV]
//
// A tile keeps NS taps (one r, NS consecutive s) x NC channels x OCV vectors in
// registers (at most kDirectBlockedAvx512GwAccumulators) over a block of whole
// output rows of at most kDirectBlockedAvx512GwBlockPixels pixels; each block's
// sums are added to gwl apart, which keeps float sums short (accuracy), and
// every task owns one (gb, ob): a fixed order whatever the thread count.
template <int GPV, int OCV, int NS, int NC>
FASTCONV_TARGET_AVX512 void gw_tile_avx512(const float* x, const float* dy, int64_t rows,
                                           int64_t wo, int64_t x_row, int64_t x_pix,
                                           int64_t x_s, int64_t dy_row, int64_t dy_pix,
                                           float* out, int64_t out_s) {
  __m512 acc[NS][NC][OCV];
#pragma GCC unroll 4
  for (int t = 0; t < NS; ++t)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c)
#pragma GCC unroll 2
      for (int o = 0; o < OCV; ++o) acc[t][c][o] = _mm512_setzero_ps();
  for (int64_t row = 0; row < rows; ++row) {
    const float* xr = x + row * x_row;
    const float* dr = dy + row * dy_row;
    for (int64_t p = 0; p < wo; ++p, xr += x_pix, dr += dy_pix) {
      __m512 d[OCV];
#pragma GCC unroll 2
      for (int o = 0; o < OCV; ++o) d[o] = _mm512_loadu_ps(dr + o * kLanes);
#pragma GCC unroll 4
      for (int t = 0; t < NS; ++t)
#pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) {
          const __m512 xv = broadcast_groups<GPV>(xr + t * x_s + c * GPV);
#pragma GCC unroll 2
          for (int o = 0; o < OCV; ++o) acc[t][c][o] = _mm512_fmadd_ps(d[o], xv, acc[t][c][o]);
        }
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NS; ++t)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c)
#pragma GCC unroll 2
      for (int o = 0; o < OCV; ++o) {
        float* q = out + t * out_s + (c * OCV + o) * kLanes;
        _mm512_storeu_ps(q, _mm512_add_ps(_mm512_loadu_ps(q), acc[t][c][o]));
      }
}

using GwTileFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                          int64_t, int64_t, float*, int64_t);
constexpr int kGwMaxTaps = 3;  // NS: 1..3 consecutive kernel columns
constexpr int kGwAccs = int(blocking::kDirectBlockedAvx512GwAccumulators);

// Tiles indexed [NS - 1][log2 NC] (NC = 1, 2, 4, 8), null where NS x NC x OCV
// exceeds the accumulator budget.
template <int GPV, int OCV>
const std::array<std::array<GwTileFn, 4>, kGwMaxTaps>& gw_tiles() {
  static const auto table = [] {
    std::array<std::array<GwTileFn, 4>, kGwMaxTaps> t{};
    auto put = [&](auto ns, auto lnc) {
      constexpr int NS = decltype(ns)::value, NC = 1 << decltype(lnc)::value;
      if constexpr (NS * NC * OCV <= kGwAccs) t[NS - 1][decltype(lnc)::value] = &gw_tile_avx512<GPV, OCV, NS, NC>;
    };
    auto row = [&](auto ns) {
      put(ns, std::integral_constant<int, 0>{});
      put(ns, std::integral_constant<int, 1>{});
      put(ns, std::integral_constant<int, 2>{});
      put(ns, std::integral_constant<int, 3>{});
    };
    row(std::integral_constant<int, 1>{});
    row(std::integral_constant<int, 2>{});
    row(std::integral_constant<int, 3>{});
    return t;
  }();
  return table;
}

struct GwProblem {
  Layout L;
  int64_t N, Cg, Kg, R, S, Ho, Wo, Hp, Wp, sh, sw, dh, dw;
  PackSrc x, dy;
  float* gw;  // [K][Cg][R][S], contiguous
};

// Adds image n's products to gwl, the sums of group block gb, output block ob.
template <int GPV, int OCV>
FASTCONV_TARGET_AVX512 void gw_image(const GwProblem& P, int64_t n, int64_t gb, int64_t ob,
                                     float* xt, float* dyt, float* gwl) {
  const auto& tiles = gw_tiles<GPV, OCV>();
  const Layout& L = P.L;
  const int64_t DB = P.Kg * L.gpv;  // floats per packed grad_output pixel
  const int64_t taps_c = P.Cg * OCV * kLanes;  // gwl floats per (r, s)
  // NC: channels per tile, a power of two dividing Cg (2, 4, 8 or a 16-multiple).
  int64_t lnc = 3;
  while ((int64_t(1) << lnc) > P.Cg || P.Cg % (int64_t(1) << lnc) ||
         kGwMaxTaps * (int64_t(1) << lnc) * OCV > kGwAccs)
    --lnc;
  const int64_t nc = int64_t(1) << lnc;
  const int64_t rows_per_block =
      std::max<int64_t>(1, blocking::kDirectBlockedAvx512GwBlockPixels / std::max<int64_t>(P.Wo, 1));
  {
    pack_rows(P.x, L.gpv, L.CB, L.CB, P.Wp, n, gb, 0, P.Hp, xt);
    pack_rows(P.dy, L.gpv, DB, DB, P.Wo, n, gb, 0, P.Ho, dyt);
    for (int64_t oh0 = 0; oh0 < P.Ho; oh0 += rows_per_block) {
      const int64_t rows = std::min(rows_per_block, P.Ho - oh0);
      const float* dyb = dyt + oh0 * P.Wo * DB + ob * OCV * kLanes;
      for (int64_t r = 0; r < P.R; ++r)
        for (int64_t s0 = 0, ns = 0; s0 < P.S; s0 += ns) {
          const int64_t left = P.S - s0;
          ns = ceil_div(left, ceil_div(left, kGwMaxTaps));
          const GwTileFn fn = tiles[ns - 1][lnc];
          for (int64_t c0 = 0; c0 < P.Cg; c0 += nc) {
            const float* xb = xt + ((oh0 * P.sh + r * P.dh) * P.Wp + s0 * P.dw) * L.CB + c0 * GPV;
            fn(xb, dyb, rows, P.Wo, P.sh * P.Wp * L.CB, P.sw * L.CB, P.dw * L.CB, P.Wo * DB, DB,
               gwl + (r * P.S + s0) * taps_c + c0 * OCV * kLanes, taps_c);
          }
        }
    }
  }
}

// gwl [R][S][Cg][OCV][16] (lane order) of (gb, ob) -> grad_weight [K][Cg][R][S], a
// scatter of 16 output channels per (r, s, c, o).
template <int OCV>
FASTCONV_TARGET_AVX512 void gw_store(const GwProblem& P, int64_t gb, int64_t ob,
                                     const float* gwl) {
  const Layout& L = P.L;
  const int64_t RS = P.R * P.S;
  const int64_t k0 = gb * P.Kg * L.gpv + ob * OCV * kLanes;
  __m512i lanes[OCV];
  for (int o = 0; o < OCV; ++o) {
    alignas(64) int32_t rel[kLanes];
    for (int64_t l = 0; l < kLanes; ++l)
      rel[l] = int32_t((o * kLanes + lane_channel(l, L.gpv)) * P.Cg * RS);
    lanes[o] = _mm512_load_si512(rel);
  }
  float* gw0 = P.gw + k0 * P.Cg * RS;
  for (int64_t rs = 0; rs < RS; ++rs)
    for (int64_t c = 0; c < P.Cg; ++c)
      for (int o = 0; o < OCV; ++o)
        _mm512_i32scatter_ps(gw0 + c * RS + rs, lanes[o],
                             _mm512_loadu_ps(gwl + ((rs * P.Cg + c) * OCV + o) * kLanes), 4);
}

// Images in turn, and within an image the (group block, output block) tasks in
// parallel, each adding to its own sums: in channels_last one group block is 64
// bytes of every pixel, so the tasks of one image read the lines of the same
// pixels one after another (a task per group block over the whole batch read 64
// of every C * 4 bytes of a multi-MB input). The sums of a task see the images in
// order whatever the thread count.
template <int GPV, int OCV>
void run_grad_weight(const GwProblem& P) {
  const Layout& L = P.L;
  const int64_t tasks = L.GB * L.OB, per_task = P.R * P.S * P.Cg * OCV * kLanes;
  std::vector<float> gwl(tasks * per_task, 0.f);
  for (int64_t n = 0; n < P.N; ++n)
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> xt(P.Hp * P.Wp * L.CB), dyt(P.Ho * P.Wo * P.Kg * L.gpv);
      for (int64_t item = begin; item < end; ++item)
        gw_image<GPV, OCV>(P, n, item / L.OB, item % L.OB, xt.data(), dyt.data(),
                           gwl.data() + item * per_task);
    });
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item)
      gw_store<OCV>(P, item / L.OB, item % L.OB, gwl.data() + item * per_task);
  });
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

namespace {

// The problem of a weight alone (what its packing depends on): one image of its own size.
ConvParams weight_params(at::IntArrayRef weight_size, int64_t groups) {
  return make_params("fastconv::direct_pack_blocked_weight",
                     {1, weight_size[1] * groups, weight_size[2], weight_size[3]}, weight_size,
                     {1, 1}, {0, 0, 0, 0}, {1, 1}, groups);
}

}  // namespace

std::vector<int64_t> direct_blocked_avx512_packed_shape(int64_t K, int64_t Cg, int64_t R,
                                                        int64_t S, int64_t groups) {
  const Layout L = layout_of(weight_params({K, Cg, R, S}, groups));
  return {L.GB, L.OB, Cg / L.cbn, R, S, L.cbn, L.ocv * kLanes};
}

at::Tensor direct_blocked_avx512_pack(const at::Tensor& weight, int64_t groups) {
  const ConvParams p = weight_params(weight.sizes(), groups);
  const Layout L = layout_of(p);
  auto wt_t = at::empty(direct_blocked_avx512_packed_shape(p.K, p.Cg, p.R, p.S, groups),
                        weight.options());
#if FASTCONV_X86
  float* wt = wt_t.data_ptr<float>();
  const WeightTaps taps;
  at::parallel_for(0, L.GB * L.OB, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk)
      pack_weight_block(weight, p, L, taps, blk / L.OB, blk % L.OB,
                        wt + blk * p.R * p.S * p.Cg * L.ocv * kLanes);
  });
#endif
  return wt_t;
}

// The inverse of direct_blocked_avx512_pack: [K][Cg][R][S].
at::Tensor direct_blocked_avx512_unpack(const at::Tensor& packed, at::IntArrayRef weight_size,
                                        int64_t groups) {
  const ConvParams p = weight_params(weight_size, groups);
  const Layout L = layout_of(p);
  const int64_t K = p.K, Cg = p.Cg, R = p.R, S = p.S, Kg = p.Kg();
  auto w_t = at::empty({K, Cg, R, S}, packed.options());
  float* w = w_t.data_ptr<float>();
  const float* o = packed.data_ptr<float>();
  for (int64_t blk = 0; blk < L.GB * L.OB; ++blk) {
    const int64_t gb = blk / L.OB, ob = blk % L.OB;
    for (int64_t cb = 0; cb < Cg; cb += L.cbn)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t c = cb; c < cb + L.cbn; ++c)
            for (int64_t v = 0; v < L.ocv; ++v)
              for (int64_t l = 0; l < kLanes; ++l) {
                const int64_t k = gb * Kg * L.gpv + (ob * L.ocv + v) * kLanes + lane_channel(l, L.gpv);
                w[((k * Cg + c) * R + r) * S + s] = *o++;
              }
  }
  return w_t;
}

namespace {

// packed: the weight already in the tiles' layout (direct_blocked_avx512_pack), or null
// to pack `weight` (read through taps) here.
void forward_into(const at::Tensor& input, const at::Tensor& weight,
                  const c10::optional<at::Tensor>& bias, const ConvParams& p, Activation act,
                  const WeightTaps& taps, at::Tensor& out, const float* packed = nullptr) {
#if FASTCONV_X86
  const Layout L = layout_of(p);
  const int64_t Hp = p.H + p.pad_top + p.pad_bottom, Wp = p.W + p.pad_left + p.pad_right;
  FASTCONV_CHECK(input.stride(1) * (kLanes - 1) < (int64_t(1) << 31) &&
                  out.stride(1) * (kLanes - 1) < (int64_t(1) << 31),
              "fastconv::direct_conv2d: channel planes too large for the AVX-512 blocked path");
  // Weights [GB][OB][Cg/cbn][R][S][cbn][OCV][16] in lane order.
  at::Tensor wt_t;
  const float* wt = packed;
  if (wt == nullptr) {
    wt_t = at::empty(direct_blocked_avx512_packed_shape(p.K, p.Cg, p.R, p.S, p.groups),
                     weight.options());
    float* dst = wt_t.data_ptr<float>();
    at::parallel_for(0, L.GB * L.OB, 1, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk)
        pack_weight_block(weight, p, L, taps, blk / L.OB, blk % L.OB,
                          dst + blk * p.R * p.S * p.Cg * L.ocv * kLanes);
    });
    wt = dst;
  }
  const int64_t Kg = p.Kg();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  Problem P;
  P.L = L;
  P.N = p.N; P.Cg = p.Cg; P.R = p.R; P.S = p.S; P.Ho = p.Ho; P.Wo = p.Wo; P.Kg = Kg;
  P.Hp = Hp; P.Wp = Wp; P.sh = p.stride_h; P.sw = p.stride_w; P.dh = p.dil_h; P.dw = p.dil_w;
  P.x = PackSrc{input.data_ptr<float>(), Strides4(input), p.H, p.W, p.pad_top, p.pad_left, p.Cg};
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
}

}  // namespace


at::Tensor direct_blocked_avx512_forward(const at::Tensor& input, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias,
                                         const ConvParams& p, Activation act,
                                         at::MemoryFormat fmt, const WeightTaps& taps) {
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), fmt);
  forward_into(input, weight, bias, p, act, taps, out);
  return out;
}

at::Tensor direct_blocked_avx512_forward_packed(const at::Tensor& input, const at::Tensor& packed,
                                                const c10::optional<at::Tensor>& bias,
                                                const ConvParams& p, Activation act,
                                                at::MemoryFormat fmt) {
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), fmt);
  forward_into(input, at::Tensor(), bias, p, act, WeightTaps(), out, packed.data_ptr<float>());
  return out;
}

void direct_blocked_avx512_forward_into(const at::Tensor& input, const at::Tensor& weight,
                                        const ConvParams& p, const WeightTaps& taps,
                                        at::Tensor& out) {
  FASTCONV_CHECK(out.sizes() == at::IntArrayRef({p.N, p.K, p.Ho, p.Wo}),
              "fastconv::direct_conv2d: output has shape ", out.sizes(), ", expected ",
              at::IntArrayRef({p.N, p.K, p.Ho, p.Wo}));
  forward_into(input, weight, c10::nullopt, p, Activation::None, taps, out);
}

at::Tensor direct_blocked_avx512_grad_weight(const at::Tensor& grad_output,
                                             const at::Tensor& input, const ConvParams& p) {
  auto gw = new_output({p.K, p.Cg, p.R, p.S}, input.options(), at::MemoryFormat::Contiguous);
#if FASTCONV_X86
  FASTCONV_CHECK(input.stride(1) * (kLanes - 1) < (int64_t(1) << 31) &&
                  grad_output.stride(1) * (kLanes - 1) < (int64_t(1) << 31),
              "fastconv::direct_conv2d_grad_weight: channel planes too large for the AVX-512 "
              "blocked path");
  const GwProblem P{
      .L = layout_of(p),
      .N = p.N, .Cg = p.Cg, .Kg = p.Kg(), .R = p.R, .S = p.S, .Ho = p.Ho, .Wo = p.Wo,
      .Hp = p.H + p.pad_top + p.pad_bottom, .Wp = p.W + p.pad_left + p.pad_right,
      .sh = p.stride_h, .sw = p.stride_w, .dh = p.dil_h, .dw = p.dil_w,
      .x = {input.data_ptr<float>(), Strides4(input), p.H, p.W, p.pad_top, p.pad_left, p.Cg},
      .dy = {grad_output.data_ptr<float>(), Strides4(grad_output), p.Ho, p.Wo, 0, 0, p.Kg()},
      .gw = gw.data_ptr<float>()};
  if (P.L.gpv == 8) run_grad_weight<8, 1>(P);
  else if (P.L.gpv == 4) run_grad_weight<4, 1>(P);
  else if (P.L.gpv == 2) run_grad_weight<2, 1>(P);
  else if (P.L.ocv == 2) run_grad_weight<1, 2>(P);
  else run_grad_weight<1, 1>(P);
#endif
  return gw;
}

}  // namespace fastconv
