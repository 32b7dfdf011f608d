// depthwise: direct depthwise convolution on the CPU, forward and both gradients.
//
// groups == in_channels, weight (K, 1, R, S) with K = M * C: output channel k
// reads input channel k / M (M is the channel multiplier). float32 runs AVX2+FMA
// kernels chosen at run time; float64 (and CPUs without AVX2) run a portable
// path with the same blocking, written as fixed-width lane loops the compiler
// vectorizes.
//
// Depthwise does ~2*R*S flops per output element against ~8 bytes moved, so it
// is bandwidth-bound: the kernels stream each input row through L1 while it is
// used and keep every loaded vector busy, rather than chase peak FMA rate.
//  * NHWC (channels_last): vectors run over channels. The weight is packed once
//    per call as [R][S][K] so each tap is one contiguous vector load, shared by a
//    register tile of kDepthwiseNhwcPixelTile pixels x kDepthwiseNhwcChanVecs
//    channel vectors. Interior pixels (every tap in bounds) run without checks;
//    border pixels compute their valid tap range. For M > 1 the input is first
//    expanded to K channels, so the kernels only ever see M = 1.
//  * NCHW: vectors run over output width. The input rows a block of output rows
//    reads are copied once into a zero-padded buffer split into stride phases
//    (phase q holds padded columns q, q+sw, q+2sw, ...), so every tap of every
//    output row is one contiguous unaligned load, for any stride, padding and
//    dilation, with no bounds checks. An output row is then a sum over a list
//    of (buffer pointer, weight) taps.
//  * grad_input is a correlation of grad_output with the flipped kernel: with
//    stride 1 and M = 1 it runs on the forward kernels. With stride > 1 (or
//    M > 1) each input column phase rho (iw = sw*j + rho) sees its own subset
//    of kernel columns, and each input row its own subset of kernel rows, so the
//    gradient is computed per phase from tap lists (no zero insertion).
//  * grad_weight reduces over N*Ho*Wo for each (k, r, s). The output rows are cut
//    into chunks fixed by the problem size; each chunk writes its own partial
//    sums and the chunks are added in a fixed order: deterministic for any
//    number of threads.
//
//  * AVX-512 (float32): channel-vector tiles over NHWC images and over
//    zero-padded channel-blocked copies of NCHW images (forward_cblock_avx512).
//    3x3/5x5/7x7 kernels at stride 1 or 2 slide along the output row
//    (chan_slide_avx512): each input vector is loaded once per kernel row and
//    feeds every output of the row tile that uses it. 3x3 NHWC grad_weight
//    keeps all 9 taps in registers (nhwc_gw3x3_avx512).
//  * AVX-512 NCHW, 3x3/5x5/7x7 at stride 1-2 on planes at least 14 x stride wide:
//    natively on rows, 16 output columns per vector, each input-row vector
//    loaded once per kernel column for every output row that reads it
//    (forward_nchw_slide_avx512); narrower planes take the channel blocks.
//
// depthwise_naive_conv2d below is the plain per-channel loop nest the tuned
// kernels are checked against (and what they replace).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "blocking.h"
#include "check.h"
#include "cpu_features.h"
#include "ops.h"
#include "util.h"

#if FASTCONV_X86
#include <immintrin.h>
#endif

namespace fastconv {

namespace {

using namespace blocking;

constexpr int64_t kVec = kDepthwiseVecWidth;


void check_depthwise(const char* op, const ConvParams& p) {
  FASTCONV_CHECK(p.groups == p.C && p.Cg == 1 && p.K % p.C == 0, op,
              ": needs a depthwise convolution (groups == in_channels, weight (K, 1, R, S) with K "
              "a multiple of in_channels); got in_channels=",
              p.C, ", groups=", p.groups, ", weight (", p.K, ", ", p.Cg, ", ", p.R, ", ", p.S, ")");
}

template <typename T>
bool use_avx2() {
  return std::is_same<T, float>::value && use_avx2_fma();
}

// ---------------------------------------------------------------------------
// The plain loop nest: one channel at a time, bounds checked per tap, no
// vectors, no blocking. Every tuned path below computes exactly this.
// ---------------------------------------------------------------------------
template <typename T>
void naive_forward(const T* x, const T* w, const T* b, T* y, const ConvParams& p, Activation act) {
  const int64_t M = p.K / p.C;
  at::parallel_for(0, p.N * p.K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nk = begin; nk < end; ++nk) {
      const int64_t n = nk / p.K, k = nk % p.K, c = k / M;
      const T* xc = x + (n * p.C + c) * p.H * p.W;
      const T* wk = w + k * p.R * p.S;
      T* yk = y + nk * p.Ho * p.Wo;
      for (int64_t oh = 0; oh < p.Ho; ++oh)
        for (int64_t ow = 0; ow < p.Wo; ++ow) {
          T acc = 0;
          for (int64_t r = 0; r < p.R; ++r) {
            const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
            if (ih < 0 || ih >= p.H) continue;
            for (int64_t s = 0; s < p.S; ++s) {
              const int64_t iw = ow * p.stride_w - p.pad_left + s * p.dil_w;
              if (iw < 0 || iw >= p.W) continue;
              acc += xc[ih * p.W + iw] * wk[r * p.S + s];
            }
          }
          yk[oh * p.Wo + ow] = activate(acc + (b ? b[k] : T(0)), act);
        }
    }
  });
}

// ---------------------------------------------------------------------------
// Leaf kernels, AVX2+FMA (float32). Helpers carry the target attribute too, so
// they inline; no lambdas here (a lambda would not inherit the target).
// ---------------------------------------------------------------------------
#if FASTCONV_X86
FASTCONV_TARGET_AVX2 inline __m256i tail_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <bool Masked>
FASTCONV_TARGET_AVX2 inline __m256 load8(const float* p, __m256i mask) {
  if constexpr (Masked) return _mm256_maskload_ps(p, mask);
  else return _mm256_loadu_ps(p);
}

// Stores act(v) to p[0..n). ReLU/ReLU6 stay in registers; SiLU/GELU need exp/erf,
// applied to the just-stored lanes while they are in L1.
template <bool Masked>
FASTCONV_TARGET_AVX2 inline void store8(float* p, __m256 v, __m256i mask, int64_t n, Activation act) {
  // max(0, v): MAXPS returns its second operand when either is NaN, so NaN
  // propagates like torch.relu (max(v, 0) turned NaN into 0).
  if (act == Activation::ReLU) v = _mm256_max_ps(_mm256_setzero_ps(), v);
  if (act == Activation::ReLU6)
    v = _mm256_min_ps(_mm256_set1_ps(6.f), _mm256_max_ps(_mm256_setzero_ps(), v));
  if constexpr (Masked) {
    // Measured: vmaskmovps stores of neighbouring short rows ran ~3x slower than
    // a spill and a scalar copy of the n valid lanes.
    alignas(32) float tmp[kVec];
    _mm256_store_ps(tmp, v);
    for (int64_t i = 0; i < n; ++i) p[i] = tmp[i];
  } else {
    _mm256_storeu_ps(p, v);
  }
  if (act == Activation::SiLU || act == Activation::GELU)
    for (int64_t i = 0; i < (Masked ? n : kVec); ++i) p[i] = activate(p[i], act);
}

FASTCONV_TARGET_AVX512 inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
}

// Stores act(v) to the lanes of m. MAXPS/MINPS return their second operand when
// either is NaN, so max(0, v) and min(6, .) keep a NaN like torch.relu does.
FASTCONV_TARGET_AVX512 inline void store16(float* p, __m512 v, __mmask16 m, Activation act) {
  if (act == Activation::ReLU) v = _mm512_max_ps(_mm512_setzero_ps(), v);
  if (act == Activation::ReLU6)
    v = _mm512_min_ps(_mm512_set1_ps(6.f), _mm512_max_ps(_mm512_setzero_ps(), v));
  _mm512_mask_storeu_ps(p, m, v);
  if (act == Activation::SiLU || act == Activation::GELU)
    for (int i = 0; i < 16; ++i)
      if (m >> i & 1) p[i] = activate(p[i], act);
}

// store16 of a full vector as a non-temporal store (p 64-byte aligned; None,
// ReLU or ReLU6 only: SiLU/GELU read the stored lanes back).
FASTCONV_TARGET_AVX512 inline void stream16(float* p, __m512 v, Activation act) {
  if (act == Activation::ReLU) v = _mm512_max_ps(_mm512_setzero_ps(), v);
  if (act == Activation::ReLU6)
    v = _mm512_min_ps(_mm512_set1_ps(6.f), _mm512_max_ps(_mm512_setzero_ps(), v));
  _mm512_stream_ps(p, v);
}

FASTCONV_TARGET_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Rows t < T of out (row stride out_stride), columns j < L:
//   out[t][j] = act(bias + sum_i ws[i] * ptrs[i][t * in_stride + j]).
// T > 1 output rows share each tap's weight broadcast and pointer (rows of the
// same kernel-row set, in_stride apart). ptrs[i][t * in_stride + j] must be
// readable for j < round_up(L, 8) (the row buffers guarantee it).
template <int T, int NV, bool Tail>
FASTCONV_TARGET_AVX2 void row_tile_avx2(float* out, int64_t out_stride, int64_t j,
                                        const float* const* ptrs, const float* ws, int64_t nt,
                                        int64_t in_stride, __m256 bv, int64_t ntail, Activation act) {
  __m256 acc[T][NV];
  for (int t = 0; t < T; ++t)
    for (int v = 0; v < NV; ++v) acc[t][v] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nt; ++i) {
    const float* p = ptrs[i] + j;
    const __m256 wv = _mm256_broadcast_ss(ws + i);
    for (int t = 0; t < T; ++t)
      for (int v = 0; v < NV; ++v)
        acc[t][v] = _mm256_fmadd_ps(_mm256_loadu_ps(p + t * in_stride + kVec * v), wv, acc[t][v]);
  }
  const __m256i all = _mm256_set1_epi32(-1), mask = tail_mask(ntail);
  for (int t = 0; t < T; ++t)
    for (int v = 0; v < NV; ++v) {
      float* o = out + t * out_stride + j + kVec * v;
      const __m256 y = _mm256_add_ps(acc[t][v], bv);
      if (Tail && v == NV - 1) store8<true>(o, y, mask, ntail, act);
      else store8<false>(o, y, all, kVec, act);
    }
}

template <int T, int NV>
FASTCONV_TARGET_AVX2 void row_tile_any_avx2(bool tail, float* out, int64_t out_stride, int64_t j,
                                            const float* const* ptrs, const float* ws, int64_t nt,
                                            int64_t in_stride, __m256 bv, int64_t ntail, Activation act) {
  if (tail) row_tile_avx2<T, NV, true>(out, out_stride, j, ptrs, ws, nt, in_stride, bv, ntail, act);
  else row_tile_avx2<T, NV, false>(out, out_stride, j, ptrs, ws, nt, in_stride, bv, ntail, act);
}

// Dispatches a remainder of nv vectors (1 <= nv <= V) to the NV == nv tile.
template <int T, int NV, int V>
FASTCONV_TARGET_AVX2 void row_tile_rem(int64_t nv, bool tail, float* out, int64_t out_stride,
                                       int64_t j, const float* const* ptrs, const float* ws,
                                       int64_t nt, int64_t in_stride, __m256 bv, int64_t ntail,
                                       Activation act) {
  if (nv == NV) return row_tile_any_avx2<T, NV>(tail, out, out_stride, j, ptrs, ws, nt, in_stride, bv, ntail, act);
  if constexpr (NV < V)
    row_tile_rem<T, NV + 1, V>(nv, tail, out, out_stride, j, ptrs, ws, nt, in_stride, bv, ntail, act);
}

template <int T>
FASTCONV_TARGET_AVX2 void rows_taps_avx2(float* out, int64_t out_stride, int64_t L,
                                         const float* const* ptrs, const float* ws, int64_t nt,
                                         int64_t in_stride, float bias, Activation act) {
  // T x V accumulators fit the 16 ymm registers with room for loads.
  constexpr int V = std::min<int>(kDepthwiseNchwWidthVecs, kDepthwiseNchwTileAccs / T);
  static_assert(V >= 1 && V <= 4, "row tile");
  const __m256 bv = _mm256_set1_ps(bias);
  int64_t j = 0;
  for (; j + kVec * V <= L; j += kVec * V)
    row_tile_avx2<T, V, false>(out, out_stride, j, ptrs, ws, nt, in_stride, bv, kVec, act);
  const int64_t rem = L - j;
  if (rem <= 0) return;
  // The last (partial) tile: as many vectors as remain, the last one masked.
  const bool tail = rem % kVec != 0;
  row_tile_rem<T, 1, V>(ceil_div(rem, kVec), tail, out, out_stride, j, ptrs, ws, nt, in_stride, bv,
                        tail ? rem % kVec : kVec, act);
}
#endif

// Portable twin of rows_taps_avx2 (any T).
template <typename T>
void rows_taps_portable(int64_t rows, T* out, int64_t out_stride, int64_t L, const T* const* ptrs,
                        const T* ws, int64_t nt, int64_t in_stride, T bias, Activation act) {
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t j = 0; j < L; j += kVec) {
      T acc[kVec] = {};
      for (int64_t i = 0; i < nt; ++i) {
        const T* p = ptrs[i] + t * in_stride + j;
        const T w = ws[i];
        for (int64_t l = 0; l < kVec; ++l) acc[l] += p[l] * w;
      }
      const int64_t n = std::min(kVec, L - j);
      for (int64_t l = 0; l < n; ++l) out[t * out_stride + j + l] = activate(acc[l] + bias, act);
    }
}

// rows is 1, kDepthwiseNchwRegRows or 2 * kDepthwiseNchwRegRows.
template <typename T>
void rows_taps(bool avx2, int64_t rows, T* out, int64_t out_stride, int64_t L, const T* const* ptrs,
               const T* ws, int64_t nt, int64_t in_stride, T bias, Activation act) {
#if FASTCONV_X86
  if constexpr (std::is_same<T, float>::value)
    if (avx2) {
      constexpr int R2 = kDepthwiseNchwRegRows;
      if (rows == 1) return rows_taps_avx2<1>(out, out_stride, L, ptrs, ws, nt, in_stride, bias, act);
      if (rows == R2) return rows_taps_avx2<R2>(out, out_stride, L, ptrs, ws, nt, in_stride, bias, act);
      if (rows == 2 * R2)
        return rows_taps_avx2<2 * R2>(out, out_stride, L, ptrs, ws, nt, in_stride, bias, act);
    }
#endif
  rows_taps_portable(rows, out, out_stride, L, ptrs, ws, nt, in_stride, bias, act);
}

template <typename T>
void row_taps(bool avx2, T* out, int64_t L, const T* const* ptrs, const T* ws, int64_t nt, T bias,
              Activation act) {
  rows_taps(avx2, 1, out, 0, L, ptrs, ws, nt, 0, bias, act);
}

// ---------------------------------------------------------------------------
// NCHW: zero-padded, stride-phase-split input rows.
// Row b of the buffer is input row ih_lo + b, stored as sw phases of Lq
// elements: phase q, element j = padded column sw*j + q = input column
// sw*j + q - pl (zero outside [0, W)). Output column ow, kernel column s reads
// padded column ow*sw + s*dw = phase (s*dw) % sw, element ow + (s*dw) / sw.
// ---------------------------------------------------------------------------
struct PhaseRows {
  int64_t sw, pl, Lq;
  int64_t row_elems() const { return sw * Lq; }
  static PhaseRows make(const ConvParams& p) {
    // Readable for j < round_up(Wo, 8) after the largest tap offset.
    return {p.stride_w, p.pad_left, round_up(p.Wo, kVec) + (p.S - 1) * p.dil_w / p.stride_w};
  }
  // Element offset of kernel column s inside a buffer row.
  int64_t tap_offset(int64_t s, int64_t dw) const { return ((s * dw) % sw) * Lq + (s * dw) / sw; }
};

template <typename T>
void build_phase_rows(const T* plane, int64_t W, int64_t ih_lo, int64_t nrows, const PhaseRows& pr,
                      T* buf) {
  for (int64_t b = 0; b < nrows; ++b) {
    const T* src = plane + (ih_lo + b) * W;
    for (int64_t q = 0; q < pr.sw; ++q) {
      T* dst = buf + (b * pr.sw + q) * pr.Lq;
      const int64_t j0 = std::min(pr.Lq, std::max<int64_t>(0, ceil_div(pr.pl - q, pr.sw)));
      const int64_t j1 = std::min(pr.Lq, std::max(j0, floor_div(W - 1 + pr.pl - q, pr.sw) + 1));
      std::fill(dst, dst + j0, T(0));
      if (pr.sw == 1) {
        std::memcpy(dst + j0, src + j0 - pr.pl, (j1 - j0) * sizeof(T));
      } else {
        const T* s = src + q - pr.pl;
        for (int64_t j = j0; j < j1; ++j) dst[j] = s[pr.sw * j];
      }
      std::fill(dst + j1, dst + pr.Lq, T(0));
    }
  }
}

bool nchw_slide_applies(const ConvParams& p);
void forward_nchw_slide_avx512(const float* x, const float* w, const float* bias, float* y,
                               const ConvParams& p, Activation act);
bool nchw_cblock_applies(const ConvParams& p);
void forward_nchw_cblock_avx512(const float* x, const float* w, const float* bias, float* y,
                                const ConvParams& p, Activation act);

template <typename T>
void forward_nchw(const T* x, const T* w, const T* bias, T* y, const ConvParams& p, Activation act) {
  if constexpr (std::is_same<T, float>::value) {
    if (use_avx512() && nchw_slide_applies(p)) return forward_nchw_slide_avx512(x, w, bias, y, p, act);
    if (use_avx512() && nchw_cblock_applies(p)) return forward_nchw_cblock_avx512(x, w, bias, y, p, act);
  }
  const int64_t M = p.K / p.C, RS = p.R * p.S;
  const PhaseRows pr = PhaseRows::make(p);
  std::vector<int64_t> tap_off(p.S);
  for (int64_t s = 0; s < p.S; ++s) tap_off[s] = pr.tap_offset(s, p.dil_w);
  const int64_t nrb = ceil_div(p.Ho, kDepthwiseRowTile);
  const bool avx2 = use_avx2<T>();
  // Narrow rows (at most kDepthwiseNchwTileAccs / (2 * kDepthwiseNchwRegRows)
  // vectors) take twice the rows per register tile.
  const int64_t reg_rows =
      ceil_div(p.Wo, kVec) * 2 * kDepthwiseNchwRegRows <= kDepthwiseNchwTileAccs
          ? 2 * kDepthwiseNchwRegRows
          : kDepthwiseNchwRegRows;
  at::parallel_for(0, p.N * p.C * nrb, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf, ws(RS);
    std::vector<const T*> ptrs(RS);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t rb = task % nrb, nc = task / nrb, n = nc / p.C, c = nc % p.C;
      const int64_t oh0 = rb * kDepthwiseRowTile, oh1 = std::min(p.Ho, oh0 + kDepthwiseRowTile);
      const int64_t ih_lo = std::max<int64_t>(0, oh0 * p.stride_h - p.pad_top);
      const int64_t ih_hi = std::min(p.H, (oh1 - 1) * p.stride_h - p.pad_top + (p.R - 1) * p.dil_h + 1);
      const int64_t nrows = std::max<int64_t>(0, ih_hi - ih_lo);
      buf.resize(std::max<int64_t>(1, nrows * pr.row_elems()));
      build_phase_rows(x + nc * p.H * p.W, p.W, ih_lo, nrows, pr, buf.data());
      for (int64_t m = 0; m < M; ++m) {
        const int64_t k = c * M + m;
        const T* wk = w + k * RS;
        const T bk = bias ? bias[k] : T(0);
        for (int64_t oh = oh0; oh < oh1;) {
          // `rows` output rows whose kernel rows are all in bounds share one tap
          // list (row t reads sh input rows further down).
          int64_t rows = 1;
          const int64_t ih_first = oh * p.stride_h - p.pad_top;
          if (ih_first >= 0 && oh + reg_rows <= oh1 &&
              (oh + reg_rows - 1) * p.stride_h - p.pad_top + (p.R - 1) * p.dil_h < p.H)
            rows = reg_rows;
          int64_t nt = 0;
          for (int64_t r = 0; r < p.R; ++r) {
            const int64_t ih = ih_first + r * p.dil_h;
            if (ih < 0 || ih >= p.H) continue;
            const T* row = buf.data() + (ih - ih_lo) * pr.row_elems();
            for (int64_t s = 0; s < p.S; ++s, ++nt) {
              ptrs[nt] = row + tap_off[s];
              ws[nt] = wk[r * p.S + s];
            }
          }
          rows_taps(avx2, rows, y + ((n * p.K + k) * p.Ho + oh) * p.Wo, p.Wo, p.Wo, ptrs.data(),
                    ws.data(), nt, p.stride_h * pr.row_elems(), bk, act);
          oh += rows;
        }
      }
    }
  });
}

// grad_input, NCHW. dx[ih][iw] = sum over (m, r, s) with ih + pt - r*dh = sh*oh
// and iw + pl - s*dw = sw*ow (0 <= oh < Ho, 0 <= ow < Wo) of dy[k][oh][ow]*w[k][r][s].
// For iw = sw*j + rho the valid s and the offset ow - j depend only on rho, so
// each phase is a row_taps over zero-padded grad_output rows.
template <typename T>
void grad_input_nchw(const T* dy, const T* w, T* dx, const ConvParams& p) {
  const int64_t M = p.K / p.C, RS = p.R * p.S, sw = p.stride_w, sh = p.stride_h;
  const int64_t Lphase = ceil_div(p.W, sw);  // columns of phase 0, the longest
  // Offsets o = (rho + pl - s*dw) / sw lie in [-PL, omax].
  const int64_t PL = std::max<int64_t>(0, -floor_div(p.pad_left - (p.S - 1) * p.dil_w, sw));
  const int64_t omax = floor_div(sw - 1 + p.pad_left, sw);
  const int64_t Lb = PL + std::max(p.Wo, round_up(Lphase, kVec) + std::max<int64_t>(0, omax));
  const int64_t nrb = ceil_div(p.H, kDepthwiseRowTile);
  const bool avx2 = use_avx2<T>();
  at::parallel_for(0, p.N * p.C * nrb, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf, ws(M * RS), tmp(round_up(Lphase, kVec));
    std::vector<const T*> ptrs(M * RS);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t rb = task % nrb, nc = task / nrb, n = nc / p.C, c = nc % p.C;
      const int64_t ih0 = rb * kDepthwiseRowTile, ih1 = std::min(p.H, ih0 + kDepthwiseRowTile);
      const int64_t oh_lo =
          std::max<int64_t>(0, ceil_div(ih0 + p.pad_top - (p.R - 1) * p.dil_h, sh));
      const int64_t oh_hi = std::min(p.Ho, floor_div(ih1 - 1 + p.pad_top, sh) + 1);
      const int64_t nrows = std::max<int64_t>(0, oh_hi - oh_lo);
      buf.resize(std::max<int64_t>(1, M * nrows * Lb));
      for (int64_t m = 0; m < M; ++m)
        for (int64_t b = 0; b < nrows; ++b) {
          T* row = buf.data() + (m * nrows + b) * Lb;
          const T* src = dy + ((n * p.K + c * M + m) * p.Ho + oh_lo + b) * p.Wo;
          std::fill(row, row + PL, T(0));
          std::memcpy(row + PL, src, p.Wo * sizeof(T));
          std::fill(row + PL + p.Wo, row + Lb, T(0));
        }
      for (int64_t ih = ih0; ih < ih1; ++ih) {
        T* dst = dx + (nc * p.H + ih) * p.W;
        for (int64_t rho = 0; rho < std::min(sw, p.W); ++rho) {
          int64_t nt = 0;
          for (int64_t m = 0; m < M; ++m) {
            const int64_t k = c * M + m;
            for (int64_t r = 0; r < p.R; ++r) {
              const int64_t th = ih + p.pad_top - r * p.dil_h;
              if (th < 0) break;
              if (th % sh) continue;
              const int64_t oh = th / sh;
              if (oh >= p.Ho) continue;
              const T* row = buf.data() + (m * nrows + oh - oh_lo) * Lb + PL;
              for (int64_t s = 0; s < p.S; ++s) {
                const int64_t tw = rho + p.pad_left - s * p.dil_w;
                if (floor_mod(tw, sw)) continue;
                ptrs[nt] = row + floor_div(tw, sw);
                ws[nt++] = w[k * RS + r * p.S + s];
              }
            }
          }
          if (sw == 1) {
            row_taps(avx2, dst, p.W, ptrs.data(), ws.data(), nt, T(0), Activation::None);
          } else {
            const int64_t L = ceil_div(p.W - rho, sw);
            row_taps(avx2, tmp.data(), L, ptrs.data(), ws.data(), nt, T(0), Activation::None);
            for (int64_t j = 0; j < L; ++j) dst[sw * j + rho] = tmp[j];
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// grad_weight chunking (shared by both layouts): output rows (n, oh), flattened,
// are cut into nchunks chunks of rows_per_chunk rows, from the problem alone.
// ---------------------------------------------------------------------------
struct Chunks {
  int64_t nchunks, rows_per_chunk;
  static Chunks make(const ConvParams& p, int64_t elem_size) {
    const int64_t rows = p.N * p.Ho;
    const int64_t partial_bytes = p.K * p.R * p.S * elem_size;
    int64_t n = std::min(ceil_div(rows, kDepthwiseGradWeightMinChunkRows), kDepthwiseGradWeightMaxChunks);
    n = std::min(n, std::max<int64_t>(1, kDepthwiseGradWeightMaxPartialBytes / partial_bytes));
    n = std::max<int64_t>(1, n);
    const int64_t per = ceil_div(rows, n);
    return {ceil_div(rows, per), per};
  }
};

#if FASTCONV_X86
// out[g] += sum over rows i, columns j < Wo of dyrows[i][j] * xrows[i][offs[g] + j].
// Two accumulator sets (even/odd vectors) hide the FMA latency for small G.
template <int G>
FASTCONV_TARGET_AVX2 void gw_rows_avx2(const float* const* dyrows, const float* const* xrows,
                                       int64_t nrows, int64_t Wo, const int64_t* offs, float* out) {
  __m256 a0[G], a1[G];
  for (int g = 0; g < G; ++g) a0[g] = a1[g] = _mm256_setzero_ps();
  const int64_t full = Wo / kVec * kVec;
  const __m256i mask = tail_mask(Wo - full);
  for (int64_t i = 0; i < nrows; ++i) {
    const float* d = dyrows[i];
    const float* xr = xrows[i];
    int64_t j = 0;
    for (; j + 2 * kVec <= full; j += 2 * kVec) {
      const __m256 d0 = _mm256_loadu_ps(d + j), d1 = _mm256_loadu_ps(d + j + kVec);
      for (int g = 0; g < G; ++g) {
        a0[g] = _mm256_fmadd_ps(d0, _mm256_loadu_ps(xr + offs[g] + j), a0[g]);
        a1[g] = _mm256_fmadd_ps(d1, _mm256_loadu_ps(xr + offs[g] + j + kVec), a1[g]);
      }
    }
    for (; j < full; j += kVec) {
      const __m256 d0 = _mm256_loadu_ps(d + j);
      for (int g = 0; g < G; ++g) a0[g] = _mm256_fmadd_ps(d0, _mm256_loadu_ps(xr + offs[g] + j), a0[g]);
    }
    if (full < Wo) {
      // Masked grad_output lanes are zero; the buffer lanes they meet are finite.
      const __m256 d1 = _mm256_maskload_ps(d + full, mask);
      for (int g = 0; g < G; ++g) a1[g] = _mm256_fmadd_ps(d1, _mm256_loadu_ps(xr + offs[g] + full), a1[g]);
    }
  }
  for (int g = 0; g < G; ++g) out[g] += hsum8(_mm256_add_ps(a0[g], a1[g]));
}

// AVX-512 twin of gw_rows_avx2; the row tail is a masked load of both operands.
template <int G>
FASTCONV_TARGET_AVX512 void gw_rows_avx512(const float* const* dyrows, const float* const* xrows,
                                           int64_t nrows, int64_t Wo, const int64_t* offs, float* out) {
  __m512 a0[G], a1[G];
  for (int g = 0; g < G; ++g) a0[g] = a1[g] = _mm512_setzero_ps();
  const int64_t full = Wo / 16 * 16;
  const __mmask16 mask = mask16(Wo - full);
  for (int64_t i = 0; i < nrows; ++i) {
    const float* d = dyrows[i];
    const float* xr = xrows[i];
    int64_t j = 0;
    for (; j + 32 <= full; j += 32) {
      const __m512 d0 = _mm512_loadu_ps(d + j), d1 = _mm512_loadu_ps(d + j + 16);
      for (int g = 0; g < G; ++g) {
        a0[g] = _mm512_fmadd_ps(d0, _mm512_loadu_ps(xr + offs[g] + j), a0[g]);
        a1[g] = _mm512_fmadd_ps(d1, _mm512_loadu_ps(xr + offs[g] + j + 16), a1[g]);
      }
    }
    for (; j < full; j += 16) {
      const __m512 d0 = _mm512_loadu_ps(d + j);
      for (int g = 0; g < G; ++g) a0[g] = _mm512_fmadd_ps(d0, _mm512_loadu_ps(xr + offs[g] + j), a0[g]);
    }
    if (full < Wo) {
      const __m512 d1 = _mm512_maskz_loadu_ps(mask, d + full);
      for (int g = 0; g < G; ++g)
        a1[g] = _mm512_fmadd_ps(d1, _mm512_maskz_loadu_ps(mask, xr + offs[g] + full), a1[g]);
    }
  }
  for (int g = 0; g < G; ++g) out[g] += _mm512_reduce_add_ps(_mm512_add_ps(a0[g], a1[g]));
}

void gw_rows_avx512_any(const float* const* dyrows, const float* const* xrows, int64_t nrows,
                        int64_t Wo, const int64_t* offs, int64_t G, float* out) {
  static_assert(kDepthwiseGradWeightTapGroup == 6, "update the switch below");
  switch (G) {
    case 1: return gw_rows_avx512<1>(dyrows, xrows, nrows, Wo, offs, out);
    case 2: return gw_rows_avx512<2>(dyrows, xrows, nrows, Wo, offs, out);
    case 3: return gw_rows_avx512<3>(dyrows, xrows, nrows, Wo, offs, out);
    case 4: return gw_rows_avx512<4>(dyrows, xrows, nrows, Wo, offs, out);
    case 5: return gw_rows_avx512<5>(dyrows, xrows, nrows, Wo, offs, out);
    default: return gw_rows_avx512<6>(dyrows, xrows, nrows, Wo, offs, out);
  }
}

void gw_rows_avx2_any(const float* const* dyrows, const float* const* xrows, int64_t nrows,
                      int64_t Wo, const int64_t* offs, int64_t G, float* out) {
  static_assert(kDepthwiseGradWeightTapGroup == 6, "update the switch below");
  switch (G) {
    case 1: return gw_rows_avx2<1>(dyrows, xrows, nrows, Wo, offs, out);
    case 2: return gw_rows_avx2<2>(dyrows, xrows, nrows, Wo, offs, out);
    case 3: return gw_rows_avx2<3>(dyrows, xrows, nrows, Wo, offs, out);
    case 4: return gw_rows_avx2<4>(dyrows, xrows, nrows, Wo, offs, out);
    case 5: return gw_rows_avx2<5>(dyrows, xrows, nrows, Wo, offs, out);
    default: return gw_rows_avx2<6>(dyrows, xrows, nrows, Wo, offs, out);
  }
}
#endif

template <typename T>
void gw_rows_portable(const T* const* dyrows, const T* const* xrows, int64_t nrows, int64_t Wo,
                      const int64_t* offs, int64_t G, T* out) {
  for (int64_t g = 0; g < G; ++g) {
    T acc[kVec] = {};
    for (int64_t i = 0; i < nrows; ++i) {
      const T* d = dyrows[i];
      const T* xr = xrows[i] + offs[g];
      int64_t j = 0;
      for (; j + kVec <= Wo; j += kVec)
        for (int64_t l = 0; l < kVec; ++l) acc[l] += d[j + l] * xr[j + l];
      for (int64_t l = 0; j + l < Wo; ++l) acc[l] += d[j + l] * xr[j + l];
    }
    T sum = 0;
    for (int64_t l = 0; l < kVec; ++l) sum += acc[l];
    out[g] += sum;
  }
}

// Adds the chunks' partial sums in chunk order. part is [nchunks][K][R*S] when
// rs_major is false, [nchunks][R*S][K] when true.
template <typename T>
void combine_chunks(const std::vector<T>& part, int64_t nchunks, int64_t K, int64_t RS,
                    bool rs_major, T* gw) {
  at::parallel_for(0, K * RS, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t k = i / RS, rs = i % RS;
      const int64_t at = rs_major ? rs * K + k : i;
      T sum = 0;
      for (int64_t ch = 0; ch < nchunks; ++ch) sum += part[ch * K * RS + at];
      gw[i] = sum;
    }
  });
}

template <typename T>
void grad_weight_nchw(const T* dy, const T* x, T* gw, const ConvParams& p) {
  const int64_t M = p.K / p.C, RS = p.R * p.S, G = kDepthwiseGradWeightTapGroup;
  const PhaseRows pr = PhaseRows::make(p);
  std::vector<int64_t> tap_off(p.S);
  for (int64_t s = 0; s < p.S; ++s) tap_off[s] = pr.tap_offset(s, p.dil_w);
  const Chunks ch = Chunks::make(p, sizeof(T));
  std::vector<T> part(ch.nchunks * p.K * RS);
  const bool avx2 = use_avx2<T>(), avx512 = avx2 && use_avx512();
  at::parallel_for(0, ch.nchunks * p.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf;
    std::vector<const T*> dyrows, xrows;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task / p.C, c = task % p.C;
      for (int64_t m = 0; m < M; ++m)
        std::fill_n(part.data() + (chunk * p.K + c * M + m) * RS, RS, T(0));
      const int64_t g1 = std::min(p.N * p.Ho, (chunk + 1) * ch.rows_per_chunk);
      for (int64_t g = chunk * ch.rows_per_chunk; g < g1;) {
        // One image's run of output rows inside the chunk.
        const int64_t n = g / p.Ho, oh_a = g % p.Ho, oh_b = std::min(p.Ho, oh_a + (g1 - g));
        g += oh_b - oh_a;
        const int64_t ih_lo = std::max<int64_t>(0, oh_a * p.stride_h - p.pad_top);
        const int64_t ih_hi =
            std::min(p.H, (oh_b - 1) * p.stride_h - p.pad_top + (p.R - 1) * p.dil_h + 1);
        const int64_t nrows = std::max<int64_t>(0, ih_hi - ih_lo);
        if (nrows == 0) continue;
        buf.resize(nrows * pr.row_elems());
        build_phase_rows(x + (n * p.C + c) * p.H * p.W, p.W, ih_lo, nrows, pr, buf.data());
        dyrows.resize(oh_b - oh_a);
        xrows.resize(oh_b - oh_a);
        for (int64_t m = 0; m < M; ++m) {
          const int64_t k = c * M + m;
          T* slab = part.data() + (chunk * p.K + k) * RS;
          const T* dyk = dy + (n * p.K + k) * p.Ho * p.Wo;
          for (int64_t r = 0; r < p.R; ++r) {
            int64_t nr = 0;
            for (int64_t oh = oh_a; oh < oh_b; ++oh) {
              const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
              if (ih < 0 || ih >= p.H) continue;
              dyrows[nr] = dyk + oh * p.Wo;
              xrows[nr++] = buf.data() + (ih - ih_lo) * pr.row_elems();
            }
            if (nr == 0) continue;
            for (int64_t s0 = 0; s0 < p.S; s0 += G) {
              const int64_t gs = std::min(G, p.S - s0);
#if FASTCONV_X86
              if constexpr (std::is_same<T, float>::value) {
                if (avx512) {
                  gw_rows_avx512_any(dyrows.data(), xrows.data(), nr, p.Wo, tap_off.data() + s0, gs,
                                     slab + r * p.S + s0);
                  continue;
                }
                if (avx2) {
                  gw_rows_avx2_any(dyrows.data(), xrows.data(), nr, p.Wo, tap_off.data() + s0, gs,
                                   slab + r * p.S + s0);
                  continue;
                }
              }
#endif
              gw_rows_portable(dyrows.data(), xrows.data(), nr, p.Wo, tap_off.data() + s0, gs,
                               slab + r * p.S + s0);
            }
          }
        }
      }
    }
  });
  combine_chunks(part, ch.nchunks, p.K, RS, false, gw);
}

// ---------------------------------------------------------------------------
// NHWC. x is in K-channel space (expanded when M > 1), w packed [R][S][K].
// ---------------------------------------------------------------------------
struct NhwcGeom {
  int64_t H, W, K, R, S, Ho, Wo, sh, sw, pt, pl, dh, dw;
  int64_t ow_lo, ow_hi;  // interior output columns: every kernel column in bounds
  explicit NhwcGeom(const ConvParams& p)
      : H(p.H), W(p.W), K(p.K), R(p.R), S(p.S), Ho(p.Ho), Wo(p.Wo), sh(p.stride_h),
        sw(p.stride_w), pt(p.pad_top), pl(p.pad_left), dh(p.dil_h), dw(p.dil_w) {
    ow_lo = std::min(Wo, std::max<int64_t>(0, ceil_div(pl, sw)));
    ow_hi = std::min(Wo, std::max(ow_lo, floor_div(W - 1 - (S - 1) * dw + pl, sw) + 1));
  }
  // Valid kernel rows for output row oh: [r0, r1).
  void row_range(int64_t oh, int64_t* ih0, int64_t* r0, int64_t* r1) const {
    *ih0 = oh * sh - pt;
    *r0 = std::max<int64_t>(0, ceil_div(-*ih0, dh));
    *r1 = std::min(R, floor_div(H - 1 - *ih0, dh) + 1);
  }
  void col_range(int64_t ow, int64_t* iw0, int64_t* s0, int64_t* s1) const {
    *iw0 = ow * sw - pl;
    *s0 = std::max<int64_t>(0, ceil_div(-*iw0, dw));
    *s1 = std::min(S, floor_div(W - 1 - *iw0, dw) + 1);
  }
};

#if FASTCONV_X86
// One border (or leftover) output pixel, channels [k0, k0 + 8V) (or the nk < 8
// channels of a masked tail).
template <int V, bool Masked>
FASTCONV_TARGET_AVX2 void nhwc_fwd_pixel_avx2(const float* x_img, const float* wp, const float* bias,
                                              float* y_row, const NhwcGeom& g, int64_t ih0,
                                              int64_t r0, int64_t r1, int64_t ow, int64_t k0,
                                              int64_t nk, Activation act) {
  const __m256i mask = tail_mask(nk);
  int64_t iw0, s0, s1;
  g.col_range(ow, &iw0, &s0, &s1);
  __m256 acc[V];
  for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x_img + (ih0 + r * g.dh) * g.W * g.K + k0;
    const float* wr = wp + r * g.S * g.K + k0;
    for (int64_t s = s0; s < s1; ++s) {
      const float* xp = xr + (iw0 + s * g.dw) * g.K;
      const float* wq = wr + s * g.K;
      for (int v = 0; v < V; ++v)
        acc[v] = _mm256_fmadd_ps(load8<Masked>(xp + kVec * v, mask), load8<Masked>(wq + kVec * v, mask), acc[v]);
    }
  }
  float* yp = y_row + ow * g.K + k0;
  for (int v = 0; v < V; ++v) {
    const __m256 bv = bias ? load8<Masked>(bias + k0 + kVec * v, mask) : _mm256_setzero_ps();
    store8<Masked>(yp + kVec * v, _mm256_add_ps(acc[v], bv), mask, nk, act);
  }
}

// kDepthwiseNhwcPixelTile interior pixels from ow (every tap in bounds, no
// checks), channels [k0, k0 + 8V): each weight vector feeds P pixels.
template <int V, bool Masked>
FASTCONV_TARGET_AVX2 void nhwc_fwd_tile_avx2(const float* x_img, const float* wp, const float* bias,
                                             float* y_row, const NhwcGeom& g, int64_t ih0,
                                             int64_t r0, int64_t r1, int64_t ow, int64_t k0,
                                             int64_t nk, Activation act) {
  constexpr int P = kDepthwiseNhwcPixelTile;
  const __m256i mask = tail_mask(nk);
  const int64_t px = g.sw * g.K;  // input step between neighbouring output pixels
  __m256 acc[P][V];
  for (int q = 0; q < P; ++q)
    for (int v = 0; v < V; ++v) acc[q][v] = _mm256_setzero_ps();
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x_img + ((ih0 + r * g.dh) * g.W + ow * g.sw - g.pl) * g.K + k0;
    const float* wr = wp + r * g.S * g.K + k0;
    for (int64_t s = 0; s < g.S; ++s) {
      const float* xs = xr + s * g.dw * g.K;
      __m256 wv[V];
      for (int v = 0; v < V; ++v) wv[v] = load8<Masked>(wr + s * g.K + kVec * v, mask);
      for (int q = 0; q < P; ++q)
        for (int v = 0; v < V; ++v)
          acc[q][v] = _mm256_fmadd_ps(load8<Masked>(xs + q * px + kVec * v, mask), wv[v], acc[q][v]);
    }
  }
  for (int v = 0; v < V; ++v) {
    const __m256 bv = bias ? load8<Masked>(bias + k0 + kVec * v, mask) : _mm256_setzero_ps();
    for (int q = 0; q < P; ++q)
      store8<Masked>(y_row + (ow + q) * g.K + k0 + kVec * v, _mm256_add_ps(acc[q][v], bv), mask, nk, act);
  }
}

// Channels [k0, k1) of pixel ow (Tile: of the P-pixel tile at ow), in blocks of
// 8V channels, then 8, then a masked tail.
template <bool Tile>
FASTCONV_TARGET_AVX2 void nhwc_fwd_channels_avx2(const float* x_img, const float* wp,
                                                 const float* bias, float* y_row, const NhwcGeom& g,
                                                 int64_t ih0, int64_t r0, int64_t r1, int64_t ow,
                                                 int64_t k0, int64_t k1, Activation act) {
  constexpr int V = kDepthwiseNhwcChanVecs;
  int64_t k = k0;
  for (; k + kVec * V <= k1; k += kVec * V) {
    if constexpr (Tile) nhwc_fwd_tile_avx2<V, false>(x_img, wp, bias, y_row, g, ih0, r0, r1, ow, k, kVec, act);
    else nhwc_fwd_pixel_avx2<V, false>(x_img, wp, bias, y_row, g, ih0, r0, r1, ow, k, kVec, act);
  }
  for (; k + kVec <= k1; k += kVec) {
    if constexpr (Tile) nhwc_fwd_tile_avx2<1, false>(x_img, wp, bias, y_row, g, ih0, r0, r1, ow, k, kVec, act);
    else nhwc_fwd_pixel_avx2<1, false>(x_img, wp, bias, y_row, g, ih0, r0, r1, ow, k, kVec, act);
  }
  if (k < k1) {
    if constexpr (Tile) nhwc_fwd_tile_avx2<1, true>(x_img, wp, bias, y_row, g, ih0, r0, r1, ow, k, k1 - k, act);
    else nhwc_fwd_pixel_avx2<1, true>(x_img, wp, bias, y_row, g, ih0, r0, r1, ow, k, k1 - k, act);
  }
}

// One output row, channels [k0, k1). Pixels outer, channels inner: the input
// rows stream through once, in address order, and the [R][S][k0:k1) weight
// slice stays in L1.
FASTCONV_TARGET_AVX2 void nhwc_fwd_avx2(const float* x_img, const float* wp, const float* bias,
                                        float* y_row, const NhwcGeom& g, int64_t oh, int64_t k0,
                                        int64_t k1, Activation act) {
  constexpr int P = kDepthwiseNhwcPixelTile;
  int64_t ih0, r0, r1;
  g.row_range(oh, &ih0, &r0, &r1);
  int64_t ow = 0;
  for (; ow < g.ow_lo; ++ow)
    nhwc_fwd_channels_avx2<false>(x_img, wp, bias, y_row, g, ih0, r0, r1, ow, k0, k1, act);
  for (; ow + P <= g.ow_hi; ow += P)
    nhwc_fwd_channels_avx2<true>(x_img, wp, bias, y_row, g, ih0, r0, r1, ow, k0, k1, act);
  for (; ow < g.Wo; ++ow)
    nhwc_fwd_channels_avx2<false>(x_img, wp, bias, y_row, g, ih0, r0, r1, ow, k0, k1, act);
}
#endif

template <typename T>
void nhwc_fwd_portable(const T* x_img, const T* wp, const T* bias, T* y_row, const NhwcGeom& g,
                       int64_t oh, int64_t k0, int64_t k1, Activation act) {
  int64_t ih0, r0, r1;
  g.row_range(oh, &ih0, &r0, &r1);
  for (int64_t kb = k0; kb < k1; kb += kVec) {
    const int64_t nk = std::min(kVec, k1 - kb);
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      int64_t iw0, s0, s1;
      g.col_range(ow, &iw0, &s0, &s1);
      T acc[kVec] = {};
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t s = s0; s < s1; ++s) {
          const T* xp = x_img + ((ih0 + r * g.dh) * g.W + iw0 + s * g.dw) * g.K + kb;
          const T* wq = wp + (r * g.S + s) * g.K + kb;
          for (int64_t l = 0; l < nk; ++l) acc[l] += xp[l] * wq[l];
        }
      T* yp = y_row + ow * g.K + kb;
      for (int64_t l = 0; l < nk; ++l) yp[l] = activate(acc[l] + (bias ? bias[kb + l] : T(0)), act);
    }
  }
}

// ---------------------------------------------------------------------------
// AVX-512 (float32): 16-lane channel-vector kernels. One register tile serves
// NHWC images and channel-blocked tiles of NCHW images alike: the operands are
// described by a ChanView (pixel-major, channels at unit stride).
// ---------------------------------------------------------------------------
// Widest kernel the channel-vector kernels take (a per-column mask table on the stack).
constexpr int64_t kChanMaxS = kDepthwiseAvx512ChanMaxS;

struct ChanView {
  const float* x;      // input (ih, iw, c) at x[(ih * W + iw) * x_pix + c]
  int64_t x_pix;
  const float* w;      // weight (r, s, c) at w[(r * S + s) * w_tap + c]
  int64_t w_tap;
  const float* bias;   // bias[c], or null
  float* y;            // output (oh, ow, c) at y[(oh * Wo + ow) * y_pix + c]
  int64_t y_pix;
  // Full output vectors go out as non-temporal stores (y and y_pix 64-byte
  // aligned; see kDepthwiseAvx512StreamMinBytes).
  bool stream = false;
};

// Valid kernel columns [cs0[ow], cs1[ow]) of every output column, padded with
// empty ranges up to Wo + kDepthwiseAvx512PixelTile so a partial tile's missing
// pixels mask every tap off.
struct ColRanges {
  std::vector<int64_t> s0, s1;
  explicit ColRanges(const NhwcGeom& g)
      : s0(g.Wo + kDepthwiseAvx512PixelTile, g.S), s1(g.Wo + kDepthwiseAvx512PixelTile, 0) {
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      int64_t iw0;
      g.col_range(ow, &iw0, &s0[ow], &s1[ow]);
    }
  }
};

#if FASTCONV_X86
// P output pixels from ow (npix of them real) x V channel vectors from channel
// k (the last vector's lanes in `tail`), kernel rows [r0, r1). Interior tiles
// (every tap of every pixel in bounds) run plain loads; Border tiles mask each
// (pixel, kernel column) tap off where it falls outside the image: a masked
// load does not fault, and the masked FMA leaves the accumulator as it was, so
// the sum is the same as the plain loop nest's over the valid taps.
// Pixel q's input address: three base pointers (q = 0, 3, 6) plus 0, 1 or 2
// pixel steps fit x86 addressing, so the 7 pixels need 4 registers, not 7
// (with 7 the offsets spilled to the stack and xmm registers, measured).
FASTCONV_TARGET_AVX512 __attribute__((always_inline)) inline const float* pix_ptr(
    const float* b0, const float* b3, const float* b6, int64_t px, int q) {
  const float* b = q < 3 ? b0 : (q < 6 ? b3 : b6);
  return b + (q % 3) * px;
}

// The epilogue of the channel-vector tiles: bias, activation and the store of P
// pixels x V channel vectors at yp (non-temporal where the view streams).
template <int P, int V, bool Border>
FASTCONV_TARGET_AVX512 __attribute__((always_inline)) inline void store_chan_tile(
    const ChanView& cv, float* yp, int64_t k, const __m512 (&acc)[P][V],
    const __mmask16 (&vm)[V], int64_t npix, Activation act) {
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    const __m512 bv = cv.bias ? _mm512_maskz_loadu_ps(vm[v], cv.bias + k + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int q = 0; q < P; ++q) {
      if (Border && q >= npix) continue;
      float* o = yp + q * cv.y_pix + 16 * v;
      const __m512 out = _mm512_add_ps(acc[q][v], bv);
      if (cv.stream && vm[v] == __mmask16(0xFFFF) && act != Activation::SiLU && act != Activation::GELU)
        stream16(o, out, act);
      else
        store16(o, out, vm[v], act);
    }
  }
}

// noinline: inlined into the row loop (12 variants) its accumulators spilled (measured).
template <int P, int V, bool Border, bool Full>
FASTCONV_TARGET_AVX512 __attribute__((noinline)) void chan_tile_p7_avx512(const ChanView& cv, const NhwcGeom& g,
                                               const __mmask16* tap_masks, int64_t oh,
                                               int64_t ih0, int64_t r0, int64_t r1, int64_t ow,
                                               int64_t npix, int64_t k, __mmask16 tail,
                                               Activation act) {
  static_assert(P <= 9, "pix_ptr covers 9 pixels");
  __mmask16 vm[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) vm[v] = v == V - 1 && !Full ? tail : __mmask16(0xFFFF);
  const int64_t px = g.sw * cv.x_pix;  // input step between neighbouring output pixels
  const int64_t xs_step = g.dw * cv.x_pix, ws_step = cv.w_tap;
  __m512 acc[P][V];
#pragma GCC unroll 16
  for (int q = 0; q < P; ++q)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[q][v] = _mm512_setzero_ps();
  for (int64_t r = r0; r < r1; ++r) {
    const float* xs = cv.x + ((ih0 + r * g.dh) * g.W + ow * g.sw - g.pl) * cv.x_pix + k;
    const float* ws = cv.w + r * g.S * cv.w_tap + k;
    const __mmask16* ms = tap_masks;
    for (int64_t s = 0; s < g.S; ++s, xs += xs_step, ws += ws_step, ms += P) {
      const float *b0 = xs, *b3 = xs + 3 * px, *b6 = xs + 6 * px;
      __m512 wv[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v)
        wv[v] = Full ? _mm512_loadu_ps(ws + 16 * v) : _mm512_maskz_loadu_ps(vm[v], ws + 16 * v);
      if constexpr (Border) {
        // A mask per (kernel column, pixel), from a table: measured 2x faster
        // than deriving it from the column ranges in the loop (front-end bound).
#pragma GCC unroll 16
        for (int q = 0; q < P; ++q) {
          const __mmask16 pm = ms[q];
          const float* xq = pix_ptr(b0, b3, b6, px, q);
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) {
            const __mmask16 m = v == V - 1 && !Full ? __mmask16(vm[v] & pm) : pm;
            acc[q][v] = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(m, xq + 16 * v), wv[v], acc[q][v], m);
          }
        }
      } else {
#pragma GCC unroll 16
        for (int q = 0; q < P; ++q) {
          const float* xq = pix_ptr(b0, b3, b6, px, q);
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) {
            const __m512 xv = v == V - 1 && !Full ? _mm512_maskz_loadu_ps(vm[v], xq + 16 * v)
                                                  : _mm512_loadu_ps(xq + 16 * v);
            acc[q][v] = _mm512_fmadd_ps(xv, wv[v], acc[q][v]);
          }
        }
      }
    }
  }
  store_chan_tile<P, V, Border>(cv, cv.y + (oh * g.Wo + ow) * cv.y_pix + k, k, acc, vm, npix, act);
}

// Sliding window over the kernel columns (dil_w == 1), V channel vectors x P
// output pixels of a row: input column i of the window feeds output q = (i - s) / SW
// for every kernel column s with (i - s) % SW == 0, so each input vector is
// loaded once per kernel row ((P - 1) * SW + S loads per P * S FMAs: 20 per 98
// for 7x7 and 14 pixels) instead of once per tap as in chan_tile_p7_avx512 (a load
// per FMA). Accumulators P x V, weights S x V, V input vectors: 30 zmm for
// 7x7 (P = 7, V = 2), 31 for 3x3 (P = 7, V = 3). A window column's FMAs wait
// on the previous column's, so a column must hold enough independent FMAs to
// cover their latency: with V = 1, 3x3 and 7x7 ran latency-bound (measured).
// Border tiles mask each window column with colm: a column outside the image
// (or past the last real pixel's window) is neither loaded nor multiplied (a
// masked FMA keeps the accumulator), so a padding tap adds nothing even with
// an Inf weight, as in the plain loop nest (tests/test_compat.py).
template <int P, int V, int S, int SW, bool Border>
FASTCONV_TARGET_AVX512 __attribute__((noinline)) void chan_slide_avx512(
    const ChanView& cv, const NhwcGeom& g, const __mmask16* colm, int64_t oh, int64_t ih0,
    int64_t r0, int64_t r1, int64_t ow, int64_t npix, int64_t k, __mmask16 tail, Activation act) {
  constexpr int NI = (P - 1) * SW + S;
  const int64_t px = cv.x_pix;
  __mmask16 vm[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) vm[v] = v == V - 1 ? tail : __mmask16(0xFFFF);
  __m512 acc[P][V];
#pragma GCC unroll 16
  for (int q = 0; q < P; ++q)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[q][v] = _mm512_setzero_ps();
  for (int64_t r = r0; r < r1; ++r) {
    const float* xs = cv.x + ((ih0 + r * g.dh) * g.W + ow * SW - g.pl) * px + k;
    const float* ws = cv.w + r * S * cv.w_tap + k;
    __m512 wv[S][V];
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) wv[s][v] = _mm512_maskz_loadu_ps(vm[v], ws + s * cv.w_tap + 16 * v);
#pragma GCC unroll 64
    for (int i = 0; i < NI; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        const __mmask16 m = Border ? __mmask16(colm[i] & vm[v]) : vm[v];
        const __m512 xv = _mm512_maskz_loadu_ps(m, xs + i * px + 16 * v);
#pragma GCC unroll 8
        for (int s = 0; s < S; ++s) {
          const int d = i - s;
          if (d >= 0 && d % SW == 0 && d / SW < P)
            acc[d / SW][v] = Border ? _mm512_mask3_fmadd_ps(xv, wv[s][v], acc[d / SW][v], m)
                                    : _mm512_fmadd_ps(xv, wv[s][v], acc[d / SW][v]);
        }
      }
    }
  }
  store_chan_tile<P, V, Border>(cv, cv.y + (oh * g.Wo + ow) * cv.y_pix + k, k, acc, vm, npix, act);
}

// The (S, SW) pairs chan_slide_avx512 is instantiated for; other kernels run
// chan_tile_p7_avx512.
bool chan_slide_applies(const NhwcGeom& g) {
  return g.dw == 1 && (g.sw == 1 || g.sw == 2) && (g.S == 3 || g.S == 5 || g.S == 7);
}

// One pixel tile at ow, channels [k0, k1) in blocks of V vectors (the last
// block as many as remain).
template <int P, int V, int S, int SW>
FASTCONV_TARGET_AVX512 void chan_slide_tile_avx512(const ChanView& cv, const NhwcGeom& g,
                                                   int64_t oh, int64_t ih0, int64_t r0, int64_t r1,
                                                   int64_t ow, int64_t k0, int64_t k1, Activation act) {
  constexpr int NI = (P - 1) * SW + S;
  const int64_t npix = std::min<int64_t>(P, g.Wo - ow);
  const bool interior = npix == P && ow >= g.ow_lo && ow + P <= g.ow_hi;
  __mmask16 colm[NI];
  if (!interior) {
    const int64_t iw0 = ow * SW - g.pl, ncols = (npix - 1) * SW + S;
    for (int i = 0; i < NI; ++i)
      colm[i] = i < ncols && iw0 + i >= 0 && iw0 + i < g.W ? __mmask16(0xFFFF) : __mmask16(0);
  }
  for (int64_t k = k0; k < k1; k += 16 * V) {
    const int64_t nk = std::min<int64_t>(16 * V, k1 - k), nv = ceil_div(nk, 16);
    const __mmask16 tail = mask16(nk - 16 * (nv - 1));
#define FASTCONV_DW_SLIDE(NV)                                                                      \
  if (interior) chan_slide_avx512<P, NV, S, SW, false>(cv, g, colm, oh, ih0, r0, r1, ow, npix, k, tail, act); \
  else chan_slide_avx512<P, NV, S, SW, true>(cv, g, colm, oh, ih0, r0, r1, ow, npix, k, tail, act);
    if (nv == V) { FASTCONV_DW_SLIDE(V) }
    else if constexpr (V > 2) { if (nv == 2) { FASTCONV_DW_SLIDE(2) } else { FASTCONV_DW_SLIDE(1) } }
    else { FASTCONV_DW_SLIDE(1) }
#undef FASTCONV_DW_SLIDE
  }
}

// One output row, channels [k0, k1), on chan_slide_avx512: tiles of P pixels,
// a last one of at most P / 2 on the half-width kernel (a 7-wide ConvNeXt
// plane, or the end of a row).
template <int P, int V, int S, int SW>
FASTCONV_TARGET_AVX512 void chan_slide_row_avx512(const ChanView& cv, const NhwcGeom& g, int64_t oh,
                                                  int64_t k0, int64_t k1, Activation act) {
  constexpr int PH = P / 2;
  int64_t ih0, r0, r1;
  g.row_range(oh, &ih0, &r0, &r1);
  for (int64_t ow = 0; ow < g.Wo;) {
    // Prefetch (to L2) this tile's part of the input rows the next output row
    // adds (see chan_row_avx512).
    for (int64_t ih = ih0 + g.R * g.dh; ih < ih0 + g.R * g.dh + g.sh && ih < g.H; ++ih) {
      const int64_t iw_a = std::max<int64_t>(0, ow * g.sw - g.pl);
      const int64_t iw_b = std::min(g.W, (ow + P) * g.sw - g.pl);
      for (int64_t iw = iw_a; iw < iw_b; ++iw) {
        const char* pp = reinterpret_cast<const char*>(cv.x + (ih * g.W + iw) * cv.x_pix + k0);
        for (int64_t b = 0; b < (k1 - k0) * 4; b += 64) _mm_prefetch(pp + b, _MM_HINT_T1);
      }
    }
    if (PH > 0 && g.Wo - ow <= PH) {
      chan_slide_tile_avx512<(PH > 0 ? PH : 1), V, S, SW>(cv, g, oh, ih0, r0, r1, ow, k0, k1, act);
      ow += PH;
    } else {
      chan_slide_tile_avx512<P, V, S, SW>(cv, g, oh, ih0, r0, r1, ow, k0, k1, act);
      ow += P;
    }
  }
}

FASTCONV_TARGET_AVX512 void chan_slide_any_avx512(const ChanView& cv, const NhwcGeom& g, int64_t oh,
                                                  int64_t k0, int64_t k1, Activation act) {
  constexpr int P7 = kDepthwiseAvx512SlidePixels, V7 = kDepthwiseAvx512SlideChanVecs,
                P3 = kDepthwiseAvx512SlideSmallPixels, V3 = kDepthwiseAvx512SlideSmallChanVecs;
#define FASTCONV_DW_SLIDE(P_, V_, S_)                                                    \
  if (g.S == S_) {                                                                       \
    if (g.sw == 1) return chan_slide_row_avx512<P_, V_, S_, 1>(cv, g, oh, k0, k1, act); \
    return chan_slide_row_avx512<P_, V_, S_, 2>(cv, g, oh, k0, k1, act);                \
  }
  FASTCONV_DW_SLIDE(P3, V3, 3)
  FASTCONV_DW_SLIDE(P7, V7, 5)
  FASTCONV_DW_SLIDE(P7, V7, 7)
#undef FASTCONV_DW_SLIDE
  FASTCONV_CHECK(false, "chan_slide_any_avx512: no kernel for S=", g.S, ", stride ", g.sw);
}

// One output row, channels [k0, k1): pixel tiles outer, channel vectors inner,
// so the input rows stream through once and the weight slice stays in L1.
FASTCONV_TARGET_AVX512 void chan_row_avx512(const ChanView& cv, const NhwcGeom& g,
                                            const ColRanges& cr, int64_t oh, int64_t k0,
                                            int64_t k1, Activation act) {
  if (chan_slide_applies(g)) return chan_slide_any_avx512(cv, g, oh, k0, k1, act);
  constexpr int P = kDepthwiseAvx512PixelTile, V = kDepthwiseAvx512ChanVecs;
  static_assert(V == 3, "update the switch below");
  int64_t ih0, r0, r1;
  g.row_range(oh, &ih0, &r0, &r1);
  const int64_t *cs0 = cr.s0.data(), *cs1 = cr.s1.data();
  __mmask16 tap_masks[kChanMaxS * P];  // [s][q]: 0xFFFF where column s of pixel q is in bounds
  for (int64_t ow = 0; ow < g.Wo; ow += P) {
    const int64_t npix = std::min<int64_t>(P, g.Wo - ow);
    const bool interior = ow >= g.ow_lo && ow + P <= g.ow_hi;
    // Prefetch (to L2) this tile's part of the input rows the next output row
    // adds: from DRAM the strided tile walk leaves the hardware prefetchers behind
    // (batch 8 ran 1.5x slower per image than batch 1, whose input sits in L2).
    for (int64_t ih = ih0 + g.R * g.dh; ih < ih0 + g.R * g.dh + g.sh; ++ih) {
      if (ih >= g.H) break;
      const int64_t iw_a = std::max<int64_t>(0, ow * g.sw - g.pl);
      const int64_t iw_b = std::min(g.W, (ow + P) * g.sw - g.pl);
      for (int64_t iw = iw_a; iw < iw_b; ++iw) {
        const char* pp = reinterpret_cast<const char*>(cv.x + (ih * g.W + iw) * cv.x_pix + k0);
        for (int64_t b = 0; b < (k1 - k0) * 4; b += 64) _mm_prefetch(pp + b, _MM_HINT_T1);
      }
    }
    if (!interior)
      for (int64_t s = 0; s < g.S; ++s)
        for (int q = 0; q < P; ++q)
          tap_masks[s * P + q] = s >= cs0[ow + q] && s < cs1[ow + q] ? __mmask16(0xFFFF) : __mmask16(0);
    for (int64_t k = k0; k < k1; k += 16 * V) {
      const int64_t nk = std::min<int64_t>(16 * V, k1 - k), nv = ceil_div(nk, 16);
      const __mmask16 tail = mask16(nk - 16 * (nv - 1));
      const bool full = tail == __mmask16(0xFFFF);
#define FASTCONV_DW_TILE(NV)                                                                       \
  if (interior && full)                                                                            \
    chan_tile_p7_avx512<P, NV, false, true>(cv, g, tap_masks, oh, ih0, r0, r1, ow, npix, k, tail, act);  \
  else if (interior)                                                                               \
    chan_tile_p7_avx512<P, NV, false, false>(cv, g, tap_masks, oh, ih0, r0, r1, ow, npix, k, tail, act); \
  else if (full)                                                                                   \
    chan_tile_p7_avx512<P, NV, true, true>(cv, g, tap_masks, oh, ih0, r0, r1, ow, npix, k, tail, act);   \
  else                                                                                             \
    chan_tile_p7_avx512<P, NV, true, false>(cv, g, tap_masks, oh, ih0, r0, r1, ow, npix, k, tail, act);
      if (nv == 3) { FASTCONV_DW_TILE(3) }
      else if (nv == 2) { FASTCONV_DW_TILE(2) }
      else { FASTCONV_DW_TILE(1) }
#undef FASTCONV_DW_TILE
    }
  }
}

// 16x16 transpose of r[0..16) in registers (unpack, unpack, two lane shuffles).
FASTCONV_TARGET_AVX512 inline void transpose16x16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
  }
}

// dst[j * dst_ld + i] = src[i * src_ld + j] for i < rows, j < cols, in 16x16 blocks.
FASTCONV_TARGET_AVX512 void transpose_avx512(const float* src, int64_t src_ld, int64_t rows,
                                             int64_t cols, float* dst, int64_t dst_ld) {
  __m512 r[16];
  for (int64_t i0 = 0; i0 < rows; i0 += 16) {
    const int64_t ni = std::min<int64_t>(16, rows - i0);
    const __mmask16 im = mask16(ni);
    for (int64_t j0 = 0; j0 < cols; j0 += 16) {
      const int64_t nj = std::min<int64_t>(16, cols - j0);
      const __mmask16 jm = mask16(nj);
      for (int i = 0; i < 16; ++i)
        r[i] = i < ni ? _mm512_maskz_loadu_ps(jm, src + (i0 + i) * src_ld + j0) : _mm512_setzero_ps();
      transpose16x16(r);
      for (int j = 0; j < nj; ++j) _mm512_mask_storeu_ps(dst + (j0 + j) * dst_ld + i0, im, r[j]);
    }
  }
}
#endif

// Channel-blocked, zero-padded tiles on AVX-512. A task is one image, a block
// of kDepthwiseAvx512ChannelBlock channels and a block of output rows: the
// input rows the block reads are written into a [row][column][channel] tile
// with the padding as zeros (NCHW: by 16x16 transposes; NHWC: a copy of the
// channel slice), the channel-vector kernel runs on it with every pixel tile
// interior (no border masks), and NCHW output is transposed back. NCHW lanes
// stay full whatever the plane width (a 7-wide row would fill 7 of 16), and
// stride needs no phase split. For narrow NHWC planes, where most pixel tiles
// touch the border, the copy costs less than the masked border tiles did.
// Wide stride-1 3x3 planes (MobileNetV2 b1, b3: 112 and 56 wide) stay on the
// row kernels: their rows fill the vectors, and the tiles' transposes measured
// as fast at batch 1 and 1.7x slower at batch 8 (b1, 1 thread). (Checked after
// nchw_slide_applies: this decides only for the kernels that one does not take.)
bool nchw_cblock_applies(const ConvParams& p) {
  const bool wide_rows = p.stride_h == 1 && p.stride_w == 1 && p.R * p.S <= kDepthwiseAvx512NchwRowsMaxTaps &&
                         p.Wo >= kDepthwiseAvx512NchwRowsMinWidth;
  return p.K == p.C && p.S <= kChanMaxS && !wide_rows;
}
// NHWC: measured (1 thread) a gain only for 7x7 kernels on 14..28-wide planes
// (ConvNeXt-T stages 2 and 3, 8-15%) with chan_tile_p7_avx512's border masks;
// on 3x3 layers the copy cost more than the masks (MobileNetV2 b4: 0.09 -> 0.19
// ms), and a 7-wide plane is one tile. chan_slide_avx512 masks a border tile's
// window columns at no cost, and without the copy ran ConvNeXt-T stages 2 and 3
// 1.15-1.35x faster (batch 1 and 8), so the copy is only for the kernels it
// does not take.
bool nhwc_cblock_applies(const ConvParams& p) {
  return p.R * p.S >= kDepthwiseAvx512NhwcTileMinTaps && p.Wo >= 2 * kDepthwiseAvx512PixelTile &&
         p.Wo <= kDepthwiseAvx512NhwcTileMaxWidth && p.S <= kChanMaxS &&
         !chan_slide_applies(NhwcGeom(p));
}

// x: NCHW with K == C channels, or NHWC in K-channel space; y in the same
// layout; wp: the weight packed [R][S][K].
void forward_cblock_avx512(const float* x, const float* wp, const float* bias, float* y,
                           const ConvParams& p, Activation act, bool nhwc) {
#if FASTCONV_X86
  const int64_t K = p.K, CB = kDepthwiseAvx512ChannelBlock;
  const int64_t Wp = (p.Wo - 1) * p.stride_w + (p.S - 1) * p.dil_w + 1;  // padded tile width
  const int64_t halo = (p.R - 1) * p.dil_h;
  const int64_t ncb = ceil_div(K, CB);
  // Output rows per task: the padded input tile about kDepthwiseAvx512TileBytes.
  const int64_t in_rows_budget = std::max<int64_t>(1, kDepthwiseAvx512TileBytes / (CB * Wp * 4));
  const int64_t rows_per_task =
      std::max<int64_t>(1, std::min(p.Ho, (in_rows_budget - halo) / p.stride_h));
  const int64_t nrb = ceil_div(p.Ho, rows_per_task);
  at::parallel_for(0, p.N * ncb * nrb, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xbuf, ybuf;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t rb = task % nrb, cb = task / nrb % ncb, n = task / nrb / ncb;
      const int64_t c0 = cb * CB, nc = std::min(CB, K - c0), ld = round_up(nc, 16);
      const int64_t oh0 = rb * rows_per_task, oh1 = std::min(p.Ho, oh0 + rows_per_task);
      const int64_t nro = oh1 - oh0, ihf = oh0 * p.stride_h - p.pad_top;
      const int64_t nrows = (nro - 1) * p.stride_h + halo + 1;
      xbuf.resize(nrows * Wp * ld);
      // Tile column j holds input column j - pad_left.
      const int64_t j0 = std::min(Wp, p.pad_left), j1 = std::max(j0, std::min(Wp, p.pad_left + p.W));
      for (int64_t b = 0; b < nrows; ++b) {
        const int64_t ih = ihf + b;
        float* row = xbuf.data() + b * Wp * ld;
        if (ih < 0 || ih >= p.H) {
          std::fill(row, row + Wp * ld, 0.f);
          continue;
        }
        std::fill(row, row + j0 * ld, 0.f);
        std::fill(row + j1 * ld, row + Wp * ld, 0.f);
        if (nhwc) {
          const float* src = x + ((n * p.H + ih) * p.W + j0 - p.pad_left) * K + c0;
          for (int64_t j = j0; j < j1; ++j, src += K) std::memcpy(row + j * ld, src, nc * sizeof(float));
        } else {
          transpose_avx512(x + ((n * K + c0) * p.H + ih) * p.W + j0 - p.pad_left, p.H * p.W, nc,
                           j1 - j0, row + j0 * ld, ld);
        }
      }
      ConvParams q = p;  // the tile: no padding, every pixel tile interior
      q.H = nrows; q.W = Wp; q.pad_top = q.pad_left = q.pad_bottom = q.pad_right = 0; q.Ho = nro;
      const NhwcGeom gt(q);
      const ColRanges crt(gt);
      float* yt;
      int64_t y_pix;
      if (nhwc) {
        yt = y + (n * p.Ho + oh0) * p.Wo * K + c0;
        y_pix = K;
      } else {
        ybuf.resize(nro * p.Wo * ld);
        yt = ybuf.data();
        y_pix = ld;
      }
      const ChanView cv{xbuf.data(), ld, wp + c0, K, bias ? bias + c0 : nullptr, yt, y_pix};
      for (int64_t oh = 0; oh < nro; ++oh) chan_row_avx512(cv, gt, crt, oh, 0, nc, act);
      if (!nhwc)
        transpose_avx512(ybuf.data(), ld, nro * p.Wo, nc, y + (n * K + c0) * p.Ho * p.Wo + oh0 * p.Wo,
                         p.Ho * p.Wo);
    }
  });
#else
  FASTCONV_CHECK(false, "forward_cblock_avx512: not an x86 build");
#endif
}

void forward_nchw_cblock_avx512(const float* x, const float* w, const float* bias, float* y,
                                const ConvParams& p, Activation act) {
#if FASTCONV_X86
  const int64_t RS = p.R * p.S;
  std::vector<float> wp(RS * p.K);
  transpose_avx512(w, RS, p.K, RS, wp.data(), p.K);
  forward_cblock_avx512(x, wp.data(), bias, y, p, act, false);
#endif
}

// ---------------------------------------------------------------------------
// NCHW natively on rows (AVX-512, float32): vectors of 16 output columns, no
// transposes. A task (n, c, block of kDepthwiseAvx512NchwSlideTaskRows output rows) copies the
// input rows the block reads into 64-byte aligned, zero-padded,
// stride-phase-split rows (PhaseRows, 16 lanes), padding rows above and below
// the image included as zeros, so every register tile is interior.
// A register tile is T output rows x NV row vectors. It walks its input rows
// once per kernel column: the vector of input row b, column tap s feeds every
// output row t of the tile that reads row b (kernel row r = b - SH * t), with
// w[r][s] broadcast from memory. Per kernel column that is (T - 1) * SH + R
// loads for T * R FMAs per vector (7x7, T = 4: 10 loads, 28 FMAs), where the
// tap-list row kernel (rows_taps_avx2) loads once per FMA.
// The nest, spelled out (forward_nchw_slide_avx512 and nchw_slide_tile_avx512):
//   for n, c, block of output rows:                       (parallel tasks)
//     buf[b][q][j] = x[n][c][ih0 + b][sw * j + q - pl]    (0 outside the image)
//     for m, tile of T output rows (oh = oh0 + t), chunk of NV * 16 columns (ow = j0 + ...):
//       for s, b, v: xv = buf[b][tap row and offset of s][j0 + 16 v + ...]
//                    for t with r = b - SH * t in [0, R): acc[t][v] += xv * w[k][r][s]
//       y[n][k][oh][ow] = act(acc + bias)                 (rows < Ho, columns < Wo)
// Each output sums its taps in (s, r) order, the same for any thread count.
// ---------------------------------------------------------------------------
bool nchw_slide_applies(const ConvParams& p) {
  return (p.R == 3 || p.R == 5 || p.R == 7) && (p.stride_h == 1 || p.stride_h == 2) && p.dil_h == 1 &&
         p.Wo >= kDepthwiseAvx512NchwSlideMinWidth * p.stride_w;
}

#if FASTCONV_X86
// build_phase_rows of one input row (stride 1 or 2) into 16-aligned phase rows,
// 16 columns per step with masked loads, the masks computed once per call
// (measured: the per-row bounds arithmetic and memcpy/fill calls cost half as
// much as the 7x7 kernel itself; stride 2's strided scalar copy as much as its
// 3x3 kernel). Stride 2: 16 outputs of a phase from two loads and a permute.
struct PhaseRowMasks {
  // Per (phase q, step j / 16): output lanes inside the image, and (stride 2)
  // the source lanes of the two loads.
  std::vector<uint16_t> out, lo, hi;
  PhaseRowMasks(const PhaseRows& pr, int64_t W) {
    auto lanes = [](int64_t a, int64_t b) {  // lanes i with a <= i < b
      a = std::clamp<int64_t>(a, 0, 16);
      b = std::clamp<int64_t>(b, a, 16);
      return uint16_t(((1u << b) - 1) & ~((1u << a) - 1));
    };
    for (int64_t q = 0; q < pr.sw; ++q) {
      const int64_t j0 = std::min(pr.Lq, std::max<int64_t>(0, ceil_div(pr.pl - q, pr.sw)));
      const int64_t j1 = std::min(pr.Lq, std::max(j0, floor_div(W - 1 + pr.pl - q, pr.sw) + 1));
      for (int64_t j = 0; j < pr.Lq; j += 16) {
        out.push_back(lanes(j0 - j, j1 - j));
        const int64_t c0 = 2 * j + q - pr.pl;  // stride 2: output lane i reads column c0 + 2i
        lo.push_back(lanes(-c0, W - c0));
        hi.push_back(lanes(-c0 - 16, W - c0 - 16));
      }
    }
  }
};

FASTCONV_TARGET_AVX512 void phase_row_avx512(const float* src, const PhaseRows& pr, const PhaseRowMasks& pm,
                                             float* dst) {
  const int64_t steps = pr.Lq / 16;
  if (pr.sw == 1) {
    for (int64_t i = 0; i < steps; ++i)
      _mm512_store_ps(dst + 16 * i, _mm512_maskz_loadu_ps(pm.out[i], src + 16 * i - pr.pl));
    return;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int64_t q = 0; q < 2; ++q)
    for (int64_t i = 0; i < steps; ++i) {
      const int64_t k = q * steps + i;
      const float* sp = src + 32 * i + q - pr.pl;
      const __m512 lo = _mm512_maskz_loadu_ps(pm.lo[k], sp), hi = _mm512_maskz_loadu_ps(pm.hi[k], sp + 16);
      _mm512_store_ps(dst + k * 16, _mm512_maskz_permutex2var_ps(pm.out[k], lo, even, hi));
    }
}

// One register tile: output rows t < nrows of T, columns [0, 16 NV) from out
// (the last vector's lanes in tail). buf: the tile's first input row;
// row_elems: buffer row stride; tap_off[s]: kernel column s's phase and offset.
template <int R, int SH, int T, int NV>
FASTCONV_TARGET_AVX512 __attribute__((noinline)) void nchw_slide_tile_avx512(
    const float* buf, int64_t row_elems, const int64_t* tap_off, int64_t S, const float* wk, float bias,
    float* out, int64_t Wo, int64_t nrows, __mmask16 tail, Activation act) {
  constexpr int NB = (T - 1) * SH + R;
  __m512 acc[T][NV];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[t][v] = _mm512_setzero_ps();
  for (int64_t s = 0; s < S; ++s) {
    // R weights + T x NV accumulators + NV inputs: at most 27 zmm.
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
        // One load per vector, kept in a register: GCC otherwise folds it
        // into each FMA that uses it (up to T loads, measured 2x slower).
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
      // Step one pointer; GCC otherwise keeps an address per (row, vector)
      // live and spills them.
      asm("" : "+r"(row));
    }
  }
  const __m512 bv = _mm512_set1_ps(bias);
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    if (t >= nrows) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      store16(out + t * Wo + 16 * v, _mm512_add_ps(acc[t][v], bv), v == NV - 1 ? tail : __mmask16(0xFFFF), act);
  }
}

// T output rows from out, every column: chunks of kDepthwiseAvx512NchwSlideWidthVecs
// vectors, the last one as many vectors as remain.
template <int R, int SH, int T>
FASTCONV_TARGET_AVX512 void nchw_slide_rows_avx512(const float* buf, int64_t row_elems, const int64_t* tap_off,
                                                   int64_t S, const float* wk, float bias, float* out,
                                                   int64_t Wo, int64_t nrows, Activation act) {
  constexpr int64_t NVmax = kDepthwiseAvx512NchwSlideWidthVecs;
  static_assert(NVmax == 4, "update the switch below");
  for (int64_t j = 0; j < Wo; j += 16 * NVmax) {
    const int64_t nv = std::min(NVmax, ceil_div(Wo - j, 16));
    const __mmask16 tail = mask16(std::min<int64_t>(16, Wo - j - 16 * (nv - 1)));
    switch (nv) {
      case 1: nchw_slide_tile_avx512<R, SH, T, 1>(buf + j, row_elems, tap_off, S, wk, bias, out + j, Wo, nrows, tail, act); break;
      case 2: nchw_slide_tile_avx512<R, SH, T, 2>(buf + j, row_elems, tap_off, S, wk, bias, out + j, Wo, nrows, tail, act); break;
      case 3: nchw_slide_tile_avx512<R, SH, T, 3>(buf + j, row_elems, tap_off, S, wk, bias, out + j, Wo, nrows, tail, act); break;
      default: nchw_slide_tile_avx512<R, SH, T, 4>(buf + j, row_elems, tap_off, S, wk, bias, out + j, Wo, nrows, tail, act); break;
    }
  }
}

// The output rows [oh0, oh1) of plane k, tiles of T rows (the last one computes
// T rows from the zero rows below and stores the real ones).
template <int R, int SH>
FASTCONV_TARGET_AVX512 void nchw_slide_block_avx512(const float* buf, int64_t row_elems, const int64_t* tap_off,
                                                    int64_t S, const float* wk, float bias, float* yk,
                                                    int64_t Wo, int64_t oh0, int64_t oh1, int64_t T,
                                                    Activation act) {
  constexpr int T1 = kDepthwiseAvx512NchwSlideRows, T2 = 2 * kDepthwiseAvx512NchwSlideRows;
  for (int64_t oh = oh0; oh < oh1; oh += T) {
    const float* b = buf + (oh - oh0) * SH * row_elems;
    if (T == T2) nchw_slide_rows_avx512<R, SH, T2>(b, row_elems, tap_off, S, wk, bias, yk + oh * Wo, Wo, oh1 - oh, act);
    else nchw_slide_rows_avx512<R, SH, T1>(b, row_elems, tap_off, S, wk, bias, yk + oh * Wo, Wo, oh1 - oh, act);
  }
}
#endif

void forward_nchw_slide_avx512(const float* x, const float* w, const float* bias, float* y,
                               const ConvParams& p, Activation act) {
#if FASTCONV_X86
  const int64_t M = p.K / p.C, RS = p.R * p.S, SH = p.stride_h;
  // Lq: 16-lane rows, 64-byte aligned.
  const int64_t Lq = round_up(round_up(p.Wo, 16) + (p.S - 1) * p.dil_w / p.stride_w, 16);
  const PhaseRows pr{p.stride_w, p.pad_left, Lq};
  const PhaseRowMasks pm(pr, p.W);
  std::vector<int64_t> tap_off(p.S);
  for (int64_t s = 0; s < p.S; ++s) tap_off[s] = pr.tap_offset(s, p.dil_w);
  const int64_t T = ceil_div(p.Wo, 16) <= 2 ? 2 * kDepthwiseAvx512NchwSlideRows : kDepthwiseAvx512NchwSlideRows;
  // Blocks a multiple of T rows, so only a plane's last tile runs past Ho.
  const int64_t rows_per_task = round_up(kDepthwiseAvx512NchwSlideTaskRows, T);
  const int64_t nrb = ceil_div(p.Ho, rows_per_task);
  // Buffer rows of a task: its tiles' input rows, the last tile's full T rows.
  const int64_t nbuf = (rows_per_task - 1) * SH + p.R;
  at::parallel_for(0, p.N * p.C * nrb, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> store(nbuf * pr.row_elems() + 16);
    float* buf = reinterpret_cast<float*>(round_up(reinterpret_cast<uintptr_t>(store.data()), 64));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t rb = task % nrb, nc = task / nrb, n = nc / p.C, c = nc % p.C;
      const int64_t oh0 = rb * rows_per_task, oh1 = std::min(p.Ho, oh0 + rows_per_task);
      const int64_t ihf = oh0 * SH - p.pad_top, nb = (round_up(oh1 - oh0, T) - 1) * SH + p.R;
      const float* plane = x + nc * p.H * p.W;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t ih = ihf + b;
        float* row = buf + b * pr.row_elems();
        if (ih < 0 || ih >= p.H) std::fill(row, row + pr.row_elems(), 0.f);
        else if (pr.sw <= 2) phase_row_avx512(plane + ih * p.W, pr, pm, row);
        else build_phase_rows(plane, p.W, ih, 1, pr, row);
      }
      for (int64_t m = 0; m < M; ++m) {
        const int64_t k = c * M + m;
        const float* wk = w + k * RS;
        const float bk = bias ? bias[k] : 0.f;
        float* yk = y + (n * p.K + k) * p.Ho * p.Wo;
#define FASTCONV_DW_NCHW_SLIDE(R_)                                                                     \
  if (p.R == R_) {                                                                                     \
    if (SH == 1) nchw_slide_block_avx512<R_, 1>(buf, pr.row_elems(), tap_off.data(), p.S, wk, bk, yk, p.Wo, oh0, oh1, T, act); \
    else nchw_slide_block_avx512<R_, 2>(buf, pr.row_elems(), tap_off.data(), p.S, wk, bk, yk, p.Wo, oh0, oh1, T, act); \
    continue;                                                                                          \
  }
        FASTCONV_DW_NCHW_SLIDE(3)
        FASTCONV_DW_NCHW_SLIDE(5)
        FASTCONV_DW_NCHW_SLIDE(7)
#undef FASTCONV_DW_NCHW_SLIDE
        FASTCONV_CHECK(false, "forward_nchw_slide_avx512: no kernel for R=", p.R);
      }
    }
  });
#else
  FASTCONV_CHECK(false, "forward_nchw_slide_avx512: not an x86 build");
#endif
}

template <typename T>
void forward_nhwc(const T* xk, const T* wp, const T* bias, T* y, const ConvParams& p, Activation act) {
  const NhwcGeom g(p);
#if FASTCONV_X86
  if constexpr (std::is_same<T, float>::value) {
    if (use_avx512() && nhwc_cblock_applies(p))
      return forward_cblock_avx512(xk, wp, bias, y, p, act, true);
    if (use_avx512() && p.S <= kChanMaxS) {
      const ColRanges cr(g);
      const int64_t CG = kDepthwiseAvx512ChannelGroup, ncg = ceil_div(p.K, CG);
      static_assert(kDepthwiseAvx512ChannelGroup % 16 == 0, "channel groups start on whole vectors");
      // An output larger than the caches goes around them: no read-for-ownership
      // of the output lines, a third less memory traffic on the layers that run
      // at copy speed (MobileNetV2 b1-b3 at batch 8).
      const bool stream = p.N * p.Ho * p.Wo * p.K * int64_t(sizeof(float)) >= kDepthwiseAvx512StreamMinBytes &&
                          p.K % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 64 == 0 && chan_slide_applies(g);
      at::parallel_for(0, p.N * p.Ho * ncg, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t cg = task % ncg, row = task / ncg, n = row / p.Ho, oh = row % p.Ho;
          const ChanView cv{xk + n * p.H * p.W * p.K, p.K, wp, p.K, bias,
                            y + n * p.Ho * p.Wo * p.K, p.K, stream};
          chan_row_avx512(cv, g, cr, oh, cg * CG, std::min(p.K, (cg + 1) * CG), act);
        }
        if (stream) _mm_sfence();  // this thread's streamed stores visible before the join
      });
      return;
    }
  }
#endif
  const int64_t ncg = ceil_div(p.K, kDepthwiseNhwcChannelGroup);
  const bool avx2 = use_avx2<T>();
  at::parallel_for(0, p.N * p.Ho * ncg, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t cg = task % ncg, row = task / ncg, n = row / p.Ho, oh = row % p.Ho;
      const int64_t k0 = cg * kDepthwiseNhwcChannelGroup;
      const int64_t k1 = std::min(p.K, k0 + kDepthwiseNhwcChannelGroup);
      const T* x_img = xk + n * p.H * p.W * p.K;
      T* y_row = y + row * p.Wo * p.K;
#if FASTCONV_X86
      if constexpr (std::is_same<T, float>::value)
        if (avx2) {
          nhwc_fwd_avx2(x_img, wp, bias, y_row, g, oh, k0, k1, act);
          continue;
        }
#endif
      nhwc_fwd_portable(x_img, wp, bias, y_row, g, oh, k0, k1, act);
    }
  });
}

// grad_input, NHWC, in K-channel space: dst[iw][k - k0] = sum over the row's
// (r, oh) taps and the column's (s, ow) taps of dy[oh][ow][k] * w[r][s][k].
struct GinTaps {
  const int64_t *row_r, *row_oh;
  int64_t nrow;
  const int64_t *col_start, *col_s, *col_ow;  // column iw: [col_start[iw], col_start[iw+1])
};

#if FASTCONV_X86
template <int V, bool Masked>
FASTCONV_TARGET_AVX2 void nhwc_gin_row_avx2(const float* dy_img, const float* wp, const NhwcGeom& g,
                                            const GinTaps& t, int64_t k0, int64_t nk, float* dst,
                                            int64_t dst_stride) {
  const __m256i mask = tail_mask(nk);
  for (int64_t iw = 0; iw < g.W; ++iw) {
    // Two accumulator sets over alternating taps hide the FMA latency.
    __m256 a0[V], a1[V];
    for (int v = 0; v < V; ++v) a0[v] = a1[v] = _mm256_setzero_ps();
    const int64_t j0 = t.col_start[iw], j1 = t.col_start[iw + 1];
    for (int64_t i = 0; i < t.nrow; ++i) {
      const float* dyr = dy_img + t.row_oh[i] * g.Wo * g.K + k0;
      const float* wr = wp + t.row_r[i] * g.S * g.K + k0;
      int64_t j = j0;
      for (; j + 2 <= j1; j += 2) {
        const float* d0 = dyr + t.col_ow[j] * g.K;
        const float* d1 = dyr + t.col_ow[j + 1] * g.K;
        const float* w0 = wr + t.col_s[j] * g.K;
        const float* w1 = wr + t.col_s[j + 1] * g.K;
        for (int v = 0; v < V; ++v) {
          a0[v] = _mm256_fmadd_ps(load8<Masked>(d0 + kVec * v, mask), load8<Masked>(w0 + kVec * v, mask), a0[v]);
          a1[v] = _mm256_fmadd_ps(load8<Masked>(d1 + kVec * v, mask), load8<Masked>(w1 + kVec * v, mask), a1[v]);
        }
      }
      if (j < j1) {
        const float* d0 = dyr + t.col_ow[j] * g.K;
        const float* w0 = wr + t.col_s[j] * g.K;
        for (int v = 0; v < V; ++v)
          a0[v] = _mm256_fmadd_ps(load8<Masked>(d0 + kVec * v, mask), load8<Masked>(w0 + kVec * v, mask), a0[v]);
      }
    }
    for (int v = 0; v < V; ++v)
      store8<Masked>(dst + iw * dst_stride + kVec * v, _mm256_add_ps(a0[v], a1[v]), mask, nk,
                     Activation::None);
  }
}

FASTCONV_TARGET_AVX2 void nhwc_gin_avx2(const float* dy_img, const float* wp, const NhwcGeom& g,
                                        const GinTaps& t, int64_t k0, int64_t k1, float* dst,
                                        int64_t dst_stride) {
  constexpr int V = kDepthwiseNhwcChanVecs;
  int64_t k = k0;
  for (; k + kVec * V <= k1; k += kVec * V)
    nhwc_gin_row_avx2<V, false>(dy_img, wp, g, t, k, kVec * V, dst + (k - k0), dst_stride);
  for (; k + kVec <= k1; k += kVec)
    nhwc_gin_row_avx2<1, false>(dy_img, wp, g, t, k, kVec, dst + (k - k0), dst_stride);
  if (k < k1) nhwc_gin_row_avx2<1, true>(dy_img, wp, g, t, k, k1 - k, dst + (k - k0), dst_stride);
}
#endif

#if FASTCONV_X86
// AVX-512 twin of nhwc_gin_row_avx2 (16-channel vectors, masked channel tail).
template <int V>
FASTCONV_TARGET_AVX512 void nhwc_gin_row_avx512(const float* dy_img, const float* wp, const NhwcGeom& g,
                                                const GinTaps& t, int64_t k0, __mmask16 tail,
                                                float* dst, int64_t dst_stride) {
  __mmask16 vm[V];
  for (int v = 0; v < V; ++v) vm[v] = v == V - 1 ? tail : __mmask16(0xFFFF);
  for (int64_t iw = 0; iw < g.W; ++iw) {
    __m512 a0[V], a1[V];
    for (int v = 0; v < V; ++v) a0[v] = a1[v] = _mm512_setzero_ps();
    const int64_t j0 = t.col_start[iw], j1 = t.col_start[iw + 1];
    for (int64_t i = 0; i < t.nrow; ++i) {
      const float* dyr = dy_img + t.row_oh[i] * g.Wo * g.K + k0;
      const float* wr = wp + t.row_r[i] * g.S * g.K + k0;
      int64_t j = j0;
      for (; j + 2 <= j1; j += 2) {
        const float* d0 = dyr + t.col_ow[j] * g.K;
        const float* d1 = dyr + t.col_ow[j + 1] * g.K;
        const float* w0 = wr + t.col_s[j] * g.K;
        const float* w1 = wr + t.col_s[j + 1] * g.K;
        for (int v = 0; v < V; ++v) {
          a0[v] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(vm[v], d0 + 16 * v), _mm512_maskz_loadu_ps(vm[v], w0 + 16 * v), a0[v]);
          a1[v] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(vm[v], d1 + 16 * v), _mm512_maskz_loadu_ps(vm[v], w1 + 16 * v), a1[v]);
        }
      }
      if (j < j1) {
        const float* d0 = dyr + t.col_ow[j] * g.K;
        const float* w0 = wr + t.col_s[j] * g.K;
        for (int v = 0; v < V; ++v)
          a0[v] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(vm[v], d0 + 16 * v), _mm512_maskz_loadu_ps(vm[v], w0 + 16 * v), a0[v]);
      }
    }
    for (int v = 0; v < V; ++v)
      _mm512_mask_storeu_ps(dst + iw * dst_stride + 16 * v, vm[v], _mm512_add_ps(a0[v], a1[v]));
  }
}

FASTCONV_TARGET_AVX512 void nhwc_gin_avx512(const float* dy_img, const float* wp, const NhwcGeom& g,
                                            const GinTaps& t, int64_t k0, int64_t k1, float* dst,
                                            int64_t dst_stride) {
  constexpr int V = kDepthwiseAvx512ChanVecs;
  static_assert(V == 3, "update the dispatch below");
  for (int64_t k = k0; k < k1; k += 16 * V) {
    const int64_t nk = std::min<int64_t>(16 * V, k1 - k), nv = ceil_div(nk, 16);
    const __mmask16 tail = mask16(nk - 16 * (nv - 1));
    float* d = dst + (k - k0);
    if (nv == 3) nhwc_gin_row_avx512<3>(dy_img, wp, g, t, k, tail, d, dst_stride);
    else if (nv == 2) nhwc_gin_row_avx512<2>(dy_img, wp, g, t, k, tail, d, dst_stride);
    else nhwc_gin_row_avx512<1>(dy_img, wp, g, t, k, tail, d, dst_stride);
  }
}
#endif

template <typename T>
void nhwc_gin_portable(const T* dy_img, const T* wp, const NhwcGeom& g, const GinTaps& t, int64_t k0,
                       int64_t k1, T* dst, int64_t dst_stride) {
  for (int64_t kb = k0; kb < k1; kb += kVec) {
    const int64_t nk = std::min(kVec, k1 - kb);
    for (int64_t iw = 0; iw < g.W; ++iw) {
      T acc[kVec] = {};
      for (int64_t i = 0; i < t.nrow; ++i)
        for (int64_t j = t.col_start[iw]; j < t.col_start[iw + 1]; ++j) {
          const T* d = dy_img + (t.row_oh[i] * g.Wo + t.col_ow[j]) * g.K + kb;
          const T* wq = wp + (t.row_r[i] * g.S + t.col_s[j]) * g.K + kb;
          for (int64_t l = 0; l < nk; ++l) acc[l] += d[l] * wq[l];
        }
      for (int64_t l = 0; l < nk; ++l) dst[iw * dst_stride + kb - k0 + l] = acc[l];
    }
  }
}

template <typename T>
void grad_input_nhwc(const T* dy, const T* wp, T* dx, const ConvParams& p) {
  const NhwcGeom g(p);
  const int64_t M = p.K / p.C;
  // Column taps: input column iw gets (s, ow) with iw + pl - s*dw = sw*ow.
  std::vector<int64_t> col_start(p.W + 1), col_s, col_ow;
  for (int64_t iw = 0; iw < p.W; ++iw) {
    col_start[iw] = col_s.size();
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t tw = iw + p.pad_left - s * p.dil_w;
      if (tw < 0 || tw % p.stride_w || tw / p.stride_w >= p.Wo) continue;
      col_s.push_back(s);
      col_ow.push_back(tw / p.stride_w);
    }
  }
  col_start[p.W] = col_s.size();
  // Tasks: one input row x a group of input channels (all M outputs of each).
  const int64_t cgroup = std::max<int64_t>(1, kDepthwiseNhwcChannelGroup / M);
  const int64_t ncg = ceil_div(p.C, cgroup);
  const bool avx2 = use_avx2<T>();
  at::parallel_for(0, p.N * p.H * ncg, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> row_r(p.R), row_oh(p.R);
    std::vector<T> tmp(M > 1 ? p.W * cgroup * M : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t cg = task % ncg, row = task / ncg, n = row / p.H, ih = row % p.H;
      const int64_t c0 = cg * cgroup, c1 = std::min(p.C, c0 + cgroup);
      const int64_t k0 = c0 * M, k1 = c1 * M;
      GinTaps t{row_r.data(), row_oh.data(), 0, col_start.data(), col_s.data(), col_ow.data()};
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t th = ih + p.pad_top - r * p.dil_h;
        if (th < 0 || th % p.stride_h || th / p.stride_h >= p.Ho) continue;
        row_r[t.nrow] = r;
        row_oh[t.nrow++] = th / p.stride_h;
      }
      const T* dy_img = dy + n * p.Ho * p.Wo * p.K;
      T* dx_row = dx + row * p.W * p.C;
      // M == 1: write straight into dx; else into tmp (K space), then sum the M.
      T* dst = M == 1 ? dx_row + c0 : tmp.data();
      const int64_t dst_stride = M == 1 ? p.C : k1 - k0;
      bool done = false;
#if FASTCONV_X86
      if constexpr (std::is_same<T, float>::value)
        if (use_avx512()) {
          nhwc_gin_avx512(dy_img, wp, g, t, k0, k1, dst, dst_stride);
          done = true;
        } else if (avx2) {
          nhwc_gin_avx2(dy_img, wp, g, t, k0, k1, dst, dst_stride);
          done = true;
        }
#endif
      if (!done) nhwc_gin_portable(dy_img, wp, g, t, k0, k1, dst, dst_stride);
      if (M > 1)
        for (int64_t iw = 0; iw < p.W; ++iw)
          for (int64_t c = c0; c < c1; ++c) {
            const T* src = tmp.data() + iw * dst_stride + (c - c0) * M;
            T sum = 0;
            for (int64_t m = 0; m < M; ++m) sum += src[m];
            dx_row[iw * p.C + c] = sum;
          }
    }
  });
}

#if FASTCONV_X86
// dst[0..8V) += sum over i < n of dy[i*K + .] * x[i*xstep + .], channels from k0.
template <int V, bool Masked>
FASTCONV_TARGET_AVX2 void nhwc_gw_seg_avx2(const float* dy, const float* x, int64_t n, int64_t K,
                                           int64_t xstep, float* dst, __m256i mask, int64_t nk) {
  constexpr int U = kDepthwiseGradWeightUnroll;
  __m256 acc[U][V];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < V; ++v) acc[u][v] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + U <= n; i += U)
    for (int u = 0; u < U; ++u) {
      const float* d = dy + (i + u) * K;
      const float* xp = x + (i + u) * xstep;
      for (int v = 0; v < V; ++v)
        acc[u][v] = _mm256_fmadd_ps(load8<Masked>(d + kVec * v, mask), load8<Masked>(xp + kVec * v, mask), acc[u][v]);
    }
  for (; i < n; ++i)
    for (int v = 0; v < V; ++v)
      acc[0][v] = _mm256_fmadd_ps(load8<Masked>(dy + i * K + kVec * v, mask),
                                  load8<Masked>(x + i * xstep + kVec * v, mask), acc[0][v]);
  for (int v = 0; v < V; ++v) {
    __m256 s = acc[0][v];
    for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[u][v]);
    s = _mm256_add_ps(load8<Masked>(dst + kVec * v, mask), s);
    store8<Masked>(dst + kVec * v, s, mask, nk, Activation::None);
  }
}

FASTCONV_TARGET_AVX2 void nhwc_gw_avx2(const float* dy, const float* x, int64_t n, int64_t K,
                                       int64_t xstep, int64_t k0, int64_t k1, float* dst) {
  constexpr int V = kDepthwiseNhwcChanVecs;
  const __m256i all = _mm256_set1_epi32(-1);
  int64_t k = k0;
  for (; k + kVec * V <= k1; k += kVec * V) nhwc_gw_seg_avx2<V, false>(dy + k, x + k, n, K, xstep, dst + k, all, kVec);
  for (; k + kVec <= k1; k += kVec) nhwc_gw_seg_avx2<1, false>(dy + k, x + k, n, K, xstep, dst + k, all, kVec);
  if (k < k1) nhwc_gw_seg_avx2<1, true>(dy + k, x + k, n, K, xstep, dst + k, tail_mask(k1 - k), k1 - k);
}
#endif

#if FASTCONV_X86
// AVX-512 twin of nhwc_gw_seg_avx2: dst[0..16V) += sum over i < n of dy[i*K + .] * x[i*xstep + .].
template <int V>
FASTCONV_TARGET_AVX512 void nhwc_gw_seg_avx512(const float* dy, const float* x, int64_t n, int64_t K,
                                               int64_t xstep, float* dst, __mmask16 tail) {
  constexpr int U = kDepthwiseGradWeightUnroll;
  __mmask16 vm[V];
  for (int v = 0; v < V; ++v) vm[v] = v == V - 1 ? tail : __mmask16(0xFFFF);
  __m512 acc[U][V];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < V; ++v) acc[u][v] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + U <= n; i += U)
    for (int u = 0; u < U; ++u) {
      const float* d = dy + (i + u) * K;
      const float* xp = x + (i + u) * xstep;
      for (int v = 0; v < V; ++v)
        acc[u][v] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(vm[v], d + 16 * v),
                                    _mm512_maskz_loadu_ps(vm[v], xp + 16 * v), acc[u][v]);
    }
  for (; i < n; ++i)
    for (int v = 0; v < V; ++v)
      acc[0][v] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(vm[v], dy + i * K + 16 * v),
                                  _mm512_maskz_loadu_ps(vm[v], x + i * xstep + 16 * v), acc[0][v]);
  for (int v = 0; v < V; ++v) {
    __m512 s = acc[0][v];
    for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u][v]);
    s = _mm512_add_ps(_mm512_maskz_loadu_ps(vm[v], dst + 16 * v), s);
    _mm512_mask_storeu_ps(dst + 16 * v, vm[v], s);
  }
}

FASTCONV_TARGET_AVX512 void nhwc_gw_avx512(const float* dy, const float* x, int64_t n, int64_t K,
                                           int64_t xstep, int64_t k0, int64_t k1, float* dst) {
  constexpr int V = 2;  // 2 vectors x kDepthwiseGradWeightUnroll accumulators
  for (int64_t k = k0; k < k1; k += 16 * V) {
    const int64_t nk = std::min<int64_t>(16 * V, k1 - k), nv = ceil_div(nk, 16);
    const __mmask16 tail = mask16(nk - 16 * (nv - 1));
    if (nv == 2) nhwc_gw_seg_avx512<2>(dy + k, x + k, n, K, xstep, dst + k, tail);
    else nhwc_gw_seg_avx512<1>(dy + k, x + k, n, K, xstep, dst + k, tail);
  }
}
#endif

template <typename T>
void nhwc_gw_portable(const T* dy, const T* x, int64_t n, int64_t K, int64_t xstep, int64_t k0,
                      int64_t k1, T* dst) {
  for (int64_t kb = k0; kb < k1; kb += kVec) {
    const int64_t nk = std::min(kVec, k1 - kb);
    T acc[kVec] = {};
    for (int64_t i = 0; i < n; ++i)
      for (int64_t l = 0; l < nk; ++l) acc[l] += dy[i * K + kb + l] * x[i * xstep + kb + l];
    for (int64_t l = 0; l < nk; ++l) dst[kb + l] += acc[l];
  }
}

#if FASTCONV_X86
// grad_weight NHWC, 3x3 on AVX-512: the 9 taps of V channel vectors accumulate
// in registers over all of a chunk's output rows (9V accumulators), and each
// grad_output vector, loaded once, feeds all 9 (the per-tap nhwc_gw_avx512
// loads it 9 times: two loads per FMA, and a read-modify-write of the partial
// sums per tap and row).
template <bool Border, int V>
FASTCONV_TARGET_AVX512 __attribute__((always_inline)) inline void gw3x3_pixel(
    __m512 (&acc)[3][3][V], const __mmask16* vm, const float* d, const float* const* xr,
    const bool* rv, int64_t iw0, const NhwcGeom& g) {
  __m512 dv[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) dv[v] = _mm512_maskz_loadu_ps(vm[v], d + 16 * v);
#pragma GCC unroll 3
  for (int r = 0; r < 3; ++r) {
    if (!rv[r]) continue;
#pragma GCC unroll 3
    for (int s = 0; s < 3; ++s) {
      const int64_t iw = iw0 + s * g.dw;
      if (Border && (iw < 0 || iw >= g.W)) continue;
      const float* xp = xr[r] + iw * g.K;
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v)
        acc[r][s][v] = _mm512_fmadd_ps(dv[v], _mm512_maskz_loadu_ps(vm[v], xp + 16 * v), acc[r][s][v]);
    }
  }
}

// Output rows [g0, g1) (flattened n * Ho + oh), channels [k, k + 16V) (the
// last vector's lanes in tail); adds the sums to slab ([R*S][K]).
template <int V>
FASTCONV_TARGET_AVX512 __attribute__((noinline)) void nhwc_gw3x3_avx512(
    const float* dy, const float* xk, const NhwcGeom& g, int64_t g0, int64_t g1, int64_t k,
    __mmask16 tail, float* slab) {
  __mmask16 vm[V];
  for (int v = 0; v < V; ++v) vm[v] = v == V - 1 ? tail : __mmask16(0xFFFF);
  __m512 acc[3][3][V];
#pragma GCC unroll 3
  for (int r = 0; r < 3; ++r)
#pragma GCC unroll 3
    for (int s = 0; s < 3; ++s)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][s][v] = _mm512_setzero_ps();
  for (int64_t gg = g0; gg < g1; ++gg) {
    const int64_t n = gg / g.Ho, oh = gg % g.Ho;
    int64_t ih0, r0, r1;
    g.row_range(oh, &ih0, &r0, &r1);
    const float* xr[3];
    bool rv[3];
    for (int r = 0; r < 3; ++r) {
      rv[r] = r >= r0 && r < r1;
      xr[r] = rv[r] ? xk + (n * g.H + ih0 + r * g.dh) * g.W * g.K + k : xk;
    }
    const float* d = dy + gg * g.Wo * g.K + k;
    int64_t ow = 0;
    for (; ow < g.ow_lo; ++ow) gw3x3_pixel<true, V>(acc, vm, d + ow * g.K, xr, rv, ow * g.sw - g.pl, g);
    for (; ow < g.ow_hi; ++ow) gw3x3_pixel<false, V>(acc, vm, d + ow * g.K, xr, rv, ow * g.sw - g.pl, g);
    for (; ow < g.Wo; ++ow) gw3x3_pixel<true, V>(acc, vm, d + ow * g.K, xr, rv, ow * g.sw - g.pl, g);
  }
#pragma GCC unroll 3
  for (int r = 0; r < 3; ++r)
#pragma GCC unroll 3
    for (int s = 0; s < 3; ++s)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        float* o = slab + (r * 3 + s) * g.K + k + 16 * v;
        _mm512_mask_storeu_ps(o, vm[v], _mm512_add_ps(_mm512_maskz_loadu_ps(vm[v], o), acc[r][s][v]));
      }
}

void nhwc_gw3x3_any_avx512(const float* dy, const float* xk, const NhwcGeom& g, int64_t g0,
                           int64_t g1, int64_t k0, int64_t k1, float* slab) {
  constexpr int V = kDepthwiseGradWeight3x3ChanVecs;
  static_assert(V == 2, "update the dispatch below");
  for (int64_t k = k0; k < k1; k += 16 * V) {
    const int64_t nk = std::min<int64_t>(16 * V, k1 - k), nv = ceil_div(nk, 16);
    const __mmask16 tail = mask16(nk - 16 * (nv - 1));
    if (nv == 2) nhwc_gw3x3_avx512<2>(dy, xk, g, g0, g1, k, tail, slab);
    else nhwc_gw3x3_avx512<1>(dy, xk, g, g0, g1, k, tail, slab);
  }
}
#endif

template <typename T>
void grad_weight_nhwc(const T* dy, const T* xk, T* gw, const ConvParams& p) {
  const int64_t RS = p.R * p.S, K = p.K;
  const Chunks ch = Chunks::make(p, sizeof(T));
  const int64_t ncg = ceil_div(K, kDepthwiseNhwcChannelGroup);
  std::vector<T> part(ch.nchunks * RS * K);  // [chunk][r][s][k]
  const bool avx2 = use_avx2<T>(), avx512 = avx2 && use_avx512();
  at::parallel_for(0, ch.nchunks * ncg, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task / ncg, cg = task % ncg;
      const int64_t k0 = cg * kDepthwiseNhwcChannelGroup, k1 = std::min(K, k0 + kDepthwiseNhwcChannelGroup);
      T* slab = part.data() + chunk * RS * K;
      for (int64_t rs = 0; rs < RS; ++rs) std::fill(slab + rs * K + k0, slab + rs * K + k1, T(0));
      const int64_t g1 = std::min(p.N * p.Ho, (chunk + 1) * ch.rows_per_chunk);
#if FASTCONV_X86
      if constexpr (std::is_same<T, float>::value)
        if (avx512 && p.R == 3 && p.S == 3) {
          nhwc_gw3x3_any_avx512(dy, xk, NhwcGeom(p), chunk * ch.rows_per_chunk, g1, k0, k1, slab);
          continue;
        }
#endif
      for (int64_t g = chunk * ch.rows_per_chunk; g < g1; ++g) {
        const int64_t n = g / p.Ho, oh = g % p.Ho;
        const T* dyrow = dy + g * p.Wo * K;
        for (int64_t r = 0; r < p.R; ++r) {
          const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
          if (ih < 0 || ih >= p.H) continue;
          const T* xrow = xk + (n * p.H + ih) * p.W * K;
          for (int64_t s = 0; s < p.S; ++s) {
            // Output columns whose input column is in bounds: one contiguous range.
            const int64_t off = s * p.dil_w - p.pad_left;
            const int64_t lo = std::max<int64_t>(0, ceil_div(-off, p.stride_w));
            const int64_t hi = std::min(p.Wo, floor_div(p.W - 1 - off, p.stride_w) + 1);
            if (lo >= hi) continue;
            const T* d = dyrow + lo * K;
            const T* xp = xrow + (lo * p.stride_w + off) * K;
            T* dst = slab + (r * p.S + s) * K;
#if FASTCONV_X86
            if constexpr (std::is_same<T, float>::value) {
              if (avx512) {
                nhwc_gw_avx512(d, xp, hi - lo, K, p.stride_w * K, k0, k1, dst);
                continue;
              }
              if (avx2) {
                nhwc_gw_avx2(d, xp, hi - lo, K, p.stride_w * K, k0, k1, dst);
                continue;
              }
            }
#endif
            nhwc_gw_portable(d, xp, hi - lo, K, p.stride_w * K, k0, k1, dst);
          }
        }
      }
    }
  });
  combine_chunks(part, ch.nchunks, K, RS, true, gw);
}

// x (NHWC, C channels) -> K channels, channel k = x channel k / M.
template <typename T>
at::Tensor expand_channels_nhwc(const at::Tensor& x, int64_t M) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto out = at::empty({N, C * M, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const T* src = x.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  at::parallel_for(0, N * H * W, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t m = 0; m < M; ++m) dst[(i * C + c) * M + m] = src[i * C + c];
  });
  return out;
}

// weight (K, 1, R, S) -> [R][S][K], so a tap is one contiguous channel vector.
template <typename T>
std::vector<T> pack_weight_rsk(const at::Tensor& w) {
  const int64_t K = w.size(0), RS = w.size(2) * w.size(3);
  const T* src = w.data_ptr<T>();
  std::vector<T> out(RS * K);
#if FASTCONV_X86
  // The scalar loop took a third of a 7x7 layer's time at batch 1 (measured).
  if constexpr (std::is_same<T, float>::value)
    if (use_avx512()) {
      transpose_avx512(src, RS, K, RS, out.data(), K);
      return out;
    }
#endif
  for (int64_t k = 0; k < K; ++k)
    for (int64_t rs = 0; rs < RS; ++rs) out[rs * K + k] = src[k * RS + rs];
  return out;
}

// With stride 1 and M = 1, grad_input is a forward depthwise correlation of
// grad_output with the flipped kernel and padding dil*(R-1) - pad per side, so
// it runs on the (faster, register-tiled) forward kernels. Returns false when
// that padding would be negative (padding wider than the kernel).
bool transposed_forward_params(const ConvParams& p, ConvParams* q) {
  const int64_t eh = p.dil_h * (p.R - 1), ew = p.dil_w * (p.S - 1);
  if (p.stride_h != 1 || p.stride_w != 1 || p.K != p.C || p.pad_top > eh || p.pad_bottom > eh ||
      p.pad_left > ew || p.pad_right > ew)
    return false;
  *q = p;
  q->H = p.Ho; q->W = p.Wo; q->Ho = p.H; q->Wo = p.W;
  q->pad_top = eh - p.pad_top; q->pad_bottom = eh - p.pad_bottom;
  q->pad_left = ew - p.pad_left; q->pad_right = ew - p.pad_right;
  return true;
}

// NCHW backward on AVX-512 for narrow planes (Wo <= kDepthwiseAvx512NchwBwdMaxWidth):
// the NCHW gradient kernels vectorize along a row, and a 7- or 14-wide row
// fills 7 or 14 of 16 lanes, so grad_output and the input are transposed
// whole to NHWC (16x16 register transposes), the channel-vector NHWC kernels
// run, and grad_input is transposed back. Measured on MobileNetV2/ConvNeXt-T
// 7..28-wide layers: 1.3-3x faster than the row kernels, transposes included.
bool nchw_bwd_via_nhwc(const ConvParams& p, const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && use_avx512() && p.Wo <= kDepthwiseAvx512NchwBwdMaxWidth;
}

// [N][C][HW] <-> [N][HW][C], float32, in blocks of 64 channels per task.
void nchw_nhwc_transpose(const float* src, float* dst, int64_t N, int64_t C, int64_t HW, bool to_nhwc) {
#if FASTCONV_X86
  constexpr int64_t CB = 64;
  const int64_t ncb = ceil_div(C, CB);
  at::parallel_for(0, N * ncb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / ncb, c0 = i % ncb * CB, nc = std::min(CB, C - c0);
      if (to_nhwc) transpose_avx512(src + (n * C + c0) * HW, HW, nc, HW, dst + n * HW * C + c0, C);
      else transpose_avx512(src + n * HW * C + c0, C, HW, nc, dst + (n * C + c0) * HW, HW);
    }
  });
#else
  FASTCONV_CHECK(false, "nchw_nhwc_transpose: not an x86 build");
#endif
}

at::Tensor to_nhwc_copy(const at::Tensor& t) {
  const auto c = t.contiguous();
  auto out = at::empty(c.sizes(), c.options().memory_format(at::MemoryFormat::ChannelsLast));
  nchw_nhwc_transpose(c.data_ptr<float>(), out.data_ptr<float>(), c.size(0), c.size(1),
                      c.size(2) * c.size(3), true);
  return out;
}

}  // namespace

at::Tensor depthwise_naive_conv2d(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                  c10::string_view activation) {
  const char* op = "fastconv::depthwise_naive_conv2d";
  const auto p = check_forward_args(op, input, weight, bias, stride, padding, dilation, groups);
  check_depthwise(op, p);
  const auto act = parse_activation(std::string(activation));
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out.contiguous(conv_memory_format(input, weight));
  const auto x = input.contiguous();
  const auto w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const auto b = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "depthwise_naive_conv2d", [&] {
    naive_forward<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                            has_bias ? b.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
                            p, act);
  });
  return out.contiguous(conv_memory_format(input, weight));
}

at::Tensor depthwise_conv2d(const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            c10::string_view activation) {
  const char* op = "fastconv::depthwise_conv2d";
  const auto p = check_forward_args(op, input, weight, bias, stride, padding, dilation, groups);
  check_depthwise(op, p);
  const auto act = parse_activation(std::string(activation));
  const auto fmt = conv_memory_format(input, weight);
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), fmt);
  if (out.numel() == 0) return out;
  const auto w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const auto b = has_bias ? bias->contiguous() : at::Tensor();
  const int64_t M = p.K / p.C;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "depthwise_conv2d", [&] {
    const scalar_t* bp = has_bias ? b.data_ptr<scalar_t>() : nullptr;
    if (fmt == at::MemoryFormat::ChannelsLast) {
      auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
      if (M > 1) x = expand_channels_nhwc<scalar_t>(x, M);
      const auto wp = pack_weight_rsk<scalar_t>(w);
      forward_nhwc<scalar_t>(x.data_ptr<scalar_t>(), wp.data(), bp, out.data_ptr<scalar_t>(), p, act);
    } else {
      const auto x = input.contiguous();
      forward_nchw<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bp,
                             out.data_ptr<scalar_t>(), p, act);
    }
  });
  return out;
}

at::Tensor depthwise_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       at::IntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups) {
  const char* op = "fastconv::depthwise_conv2d_grad_input";
  const auto p = check_grad_input_args(op, grad_output, weight, input_size, stride, padding,
                                       dilation, groups);
  check_depthwise(op, p);
  const auto fmt = grad_output.suggest_memory_format();
  auto gin = new_output(input_size, grad_output.options(), fmt);
  if (gin.numel() == 0) return gin;
  ConvParams q;
  if (transposed_forward_params(p, &q)) {
    const auto wf = weight.flip({2, 3}).contiguous();
    AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "depthwise_conv2d_grad_input", [&] {
      if (fmt == at::MemoryFormat::ChannelsLast) {
        const auto dy = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
        const auto wp = pack_weight_rsk<scalar_t>(wf);
        forward_nhwc<scalar_t>(dy.data_ptr<scalar_t>(), wp.data(), nullptr,
                               gin.data_ptr<scalar_t>(), q, Activation::None);
      } else {
        const auto dy = grad_output.contiguous();
        forward_nchw<scalar_t>(dy.data_ptr<scalar_t>(), wf.data_ptr<scalar_t>(), nullptr,
                               gin.data_ptr<scalar_t>(), q, Activation::None);
      }
    });
    return gin;
  }
  const auto w = weight.contiguous();
  if (fmt != at::MemoryFormat::ChannelsLast && nchw_bwd_via_nhwc(p, grad_output)) {
    const auto dy = to_nhwc_copy(grad_output);
    const auto wp = pack_weight_rsk<float>(w);
    auto tmp = at::empty({p.N, p.C, p.H, p.W}, gin.options().memory_format(at::MemoryFormat::ChannelsLast));
    grad_input_nhwc<float>(dy.data_ptr<float>(), wp.data(), tmp.data_ptr<float>(), p);
    nchw_nhwc_transpose(tmp.data_ptr<float>(), gin.data_ptr<float>(), p.N, p.C, p.H * p.W, false);
    return gin;
  }
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "depthwise_conv2d_grad_input", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast) {
      const auto dy = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
      const auto wp = pack_weight_rsk<scalar_t>(w);
      grad_input_nhwc<scalar_t>(dy.data_ptr<scalar_t>(), wp.data(), gin.data_ptr<scalar_t>(), p);
    } else {
      const auto dy = grad_output.contiguous();
      grad_input_nchw<scalar_t>(dy.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                gin.data_ptr<scalar_t>(), p);
    }
  });
  return gin;
}

at::Tensor depthwise_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef weight_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups) {
  const char* op = "fastconv::depthwise_conv2d_grad_weight";
  const auto p = check_grad_weight_args(op, grad_output, input, weight_size, stride, padding,
                                        dilation, groups);
  check_depthwise(op, p);
  auto gw = new_output(weight_size, input.options(), at::MemoryFormat::Contiguous);
  if (p.N == 0) return gw.zero_();
  const int64_t M = p.K / p.C;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "depthwise_conv2d_grad_weight", [&] {
    const bool via_nhwc = grad_output.suggest_memory_format() != at::MemoryFormat::ChannelsLast &&
                          nchw_bwd_via_nhwc(p, grad_output);
    if (grad_output.suggest_memory_format() == at::MemoryFormat::ChannelsLast || via_nhwc) {
      const auto dy = via_nhwc ? to_nhwc_copy(grad_output) : grad_output.contiguous(at::MemoryFormat::ChannelsLast);
      auto x = via_nhwc ? to_nhwc_copy(input) : input.contiguous(at::MemoryFormat::ChannelsLast);
      if (M > 1) x = expand_channels_nhwc<scalar_t>(x, M);
      grad_weight_nhwc<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                 gw.data_ptr<scalar_t>(), p);
    } else {
      const auto dy = grad_output.contiguous();
      const auto x = input.contiguous();
      grad_weight_nchw<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                 gw.data_ptr<scalar_t>(), p);
    }
  });
  return gw;
}

}  // namespace fastconv
