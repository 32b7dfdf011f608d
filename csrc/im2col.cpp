// im2col + GEMM convolution on the CPU: forward, grad_input, grad_weight.
//
// The output pixels, flattened over (n, oh, ow), are cut into tiles; one tile's
// column matrix lives in a buffer of at most blocking::kIm2colMaxWorkspaceBytes,
// so memory does not grow with the batch (a tile may span several small images).
// Per tile:
//   NCHW: col[(c,r,s)][p]            out[k][p] = W_g[Kg x Kd] @ col_g[Kd x P]
//   NHWC: col[p][(g,r,s,c)]          out[p][k] = col_g[P x Kd] @ Wcl_g^T[Kd x Kg]
// where Kd = C/g·R·S and Wcl is the weight in channels_last order (k, r, s, c).
// The GEMMs are BLAS calls (MKL's sgemm_/dgemm_, else ATen's mm) on our
// buffers; the bias + activation epilogue runs on each GEMM block while it is
// still in cache. 1x1 / stride-1 / unpadded convs use the input itself as the
// column matrix (no copy, no workspace).
//
// Backward: grad_input = col2im(W^T @ dY) per tile (scatter-add, each thread
// owns whole channel planes (NCHW) or channel blocks (NHWC), so no races), and
// grad_weight += dY_tile @ col_tile^T, re-using the forward im2col.
//
// Determinism: every tile's GEMM is cut into "items" whose shape depends only
// on the layer (blocking.h); items run in at::parallel_for, one BLAS thread
// each, so results are bit-identical for any torch.set_num_threads.
//
// At the bottom, im2col_conv2d_naive is the same algorithm with nothing tuned:
// the whole batch's column matrix and a triple-loop GEMM.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "blocking.h"
#include "check.h"
#include "ops.h"
#include "pointwise_gemm.h"
#include "util.h"

// MKL's per-thread thread count (the C, by-value entry point). libtorch_cpu
// exports it when torch is built with MKL; weak, so the extension still loads
// against other BLAS builds.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
// The Fortran BLAS GEMMs that libtorch_cpu exports (MKL, LP64). Called directly
// where they exist: at::mm_out on from_blob views costs ~5 us of dispatch per
// item, 10-16% of ResNet-50's NCHW 1x1 layers at batch 1 (0.84-0.97x of oneDNN
// through at::mm_out, while the same sgemm alone matched oneDNN).
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
                       const float*, const int*, const float*, const int*, const float*, float*,
                       const int*) __attribute__((weak));
extern "C" void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
                       const double*, const int*, const double*, const int*, const double*,
                       double*, const int*) __attribute__((weak));

namespace fastconv {

namespace {

using namespace blocking;

// Every BLAS call of ours runs on one thread: the threads come from our
// at::parallel_for over GEMM items. MKL otherwise splits the reduction of a
// small-M GEMM differently for 1 and 2 threads (measured: the same sgemm
// differs by 1 ulp), even when called inside a parallel region.
struct SequentialBlasGuard {
  int prev = 0;
  SequentialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) prev = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(prev);
  }
};

// Bytes of column buffer allocated by the latest im2col op (tests compare it
// with im2col_workspace_bytes).
std::atomic<int64_t> g_last_workspace_bytes{0};


// 1x1, stride 1, no padding: the input is already the column matrix.
bool is_pointwise(const ConvParams& p) {
  return p.R == 1 && p.S == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_top == 0 &&
         p.pad_bottom == 0 && p.pad_left == 0 && p.pad_right == 0;
}

// Rows of the column matrix over all groups: C·R·S.
int64_t col_rows(const ConvParams& p) { return p.C * p.R * p.S; }

// Pixel tiling, shared by every op and by im2col_workspace_bytes.
struct Tiling {
  int64_t total = 0;  // N·Ho·Wo
  int64_t tile = 0;   // pixels per tile (the last one may be shorter)
  int64_t count = 0;
};

Tiling make_tiling(const ConvParams& p, int64_t elem) {
  Tiling t;
  t.total = p.N * p.Ho * p.Wo;
  if (t.total == 0) return t;
  if (is_pointwise(p)) {  // no column buffer to bound
    t.tile = t.total;
    t.count = 1;
    return t;
  }
  int64_t tile = std::max(kIm2colMinTilePixels, kIm2colMaxWorkspaceBytes / (col_rows(p) * elem));
  tile = std::min(tile, t.total);
  // Equal tiles: 2 x 0.5 MB works better than 1 MB + a sliver.
  t.tile = ceil_div(t.total, ceil_div(t.total, tile));
  t.count = ceil_div(t.total, t.tile);
  return t;
}

// A tile's pixels [p0, p1) split at image boundaries: image n, pixels [q, q+len)
// of its Ho·Wo, at column `off` of the tile.
struct Segment {
  int64_t n, q, len, off;
};

std::vector<Segment> segments(const ConvParams& p, int64_t p0, int64_t p1) {
  const int64_t hw = p.Ho * p.Wo;
  std::vector<Segment> segs;
  for (int64_t i = p0; i < p1;) {
    const int64_t n = i / hw, q = i % hw, len = std::min(p1 - i, hw - q);
    segs.push_back({n, q, len, i - p0});
    i += len;
  }
  return segs;
}


// `t` with exactly the canonical strides of `fmt` (is_contiguous ignores the
// strides of size-1 dims; the GEMM views below rely on all of them).
at::Tensor canonical(const at::Tensor& t, at::MemoryFormat fmt) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const std::vector<int64_t> want = cl ? std::vector<int64_t>{H * W * C, 1, W * C, C}
                                       : std::vector<int64_t>{C * H * W, H * W, W, 1};
  if (t.strides() == at::IntArrayRef(want)) return t;
  auto c = at::empty(t.sizes(), t.options().memory_format(fmt));
  c.copy_(t);
  return c;
}

// A strided matrix view of raw memory, for the BLAS calls.
template <typename T>
at::Tensor mat(const T* ptr, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
               const at::TensorOptions& o) {
  return at::from_blob(const_cast<T*>(ptr), {rows, cols}, {row_stride, col_stride}, o);
}

// Row-major c[m x n] (rows ldc apart) = a · b, or += a · b (accumulate). a is
// [m x k] with rows lda apart, or (a_transposed) stored as [k x m] with rows lda
// apart; b likewise [k x n] or (b_transposed) stored [n x k], rows ldb apart.
// Through the exported Fortran GEMM when there is one (column-major: c^T = b^T a^T),
// else ATen's mm on strided views.
template <typename T>
void gemm(bool a_transposed, bool b_transposed, int64_t m, int64_t n, int64_t k, const T* a,
          int64_t lda, const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc,
          const at::TensorOptions& o) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate) mat(c, m, n, ldc, 1, o).zero_();
    return;
  }
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  // The leading dimensions Fortran asks for (at least the stored rows' length).
  const bool valid = lda >= (a_transposed ? m : k) && ldb >= (b_transposed ? k : n) && ldc >= n;
  if (valid && std::max({m, n, k, lda, ldb, ldc}) <= kMaxInt) {
    const int M = int(n), N = int(m), K = int(k), la = int(ldb), lb = int(lda), lc = int(ldc);
    const char* ta = b_transposed ? "T" : "N";
    const char* tb = a_transposed ? "T" : "N";
    const T one = 1, beta = accumulate ? 1 : 0;
    if constexpr (std::is_same_v<T, float>) {
      if (sgemm_) return sgemm_(ta, tb, &M, &N, &K, &one, b, &la, a, &lb, &beta, c, &lc);
    } else if constexpr (std::is_same_v<T, double>) {
      if (dgemm_) return dgemm_(ta, tb, &M, &N, &K, &one, b, &la, a, &lb, &beta, c, &lc);
    }
  }
  auto C = mat(c, m, n, ldc, 1, o);
  auto A = a_transposed ? mat(a, m, k, 1, lda, o) : mat(a, m, k, lda, 1, o);
  auto B = b_transposed ? mat(b, k, n, 1, ldb, o) : mat(b, k, n, ldb, 1, o);
  if (accumulate)
    C.addmm_(A, B);
  else
    at::mm_out(C, A, B);
}

// c = a · b with a row-major (the forward's GEMMs).
template <typename T>
void gemm_rows(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
               bool b_transposed, T* c, int64_t ldc, const at::TensorOptions& o) {
  gemm(false, b_transposed, m, n, k, a, lda, b, ldb, false, c, ldc, o);
}

// ---------------------------------------------------------------------------
// Epilogue: o = act(o + bias) on one GEMM block of nc channels x np pixels.

template <Activation A, typename T>
void epilogue_impl(T* o, int64_t nc, int64_t np, int64_t sc, int64_t sp, const T* bias) {
  if (sp == 1) {  // NCHW: pixels are contiguous, vectorize over them
    for (int64_t c = 0; c < nc; ++c) {
      const T b = bias ? bias[c] : T(0);
      T* row = o + c * sc;
      for (int64_t i = 0; i < np; ++i) row[i] = activate(row[i] + b, A);
    }
  } else {  // NHWC: channels are contiguous
    for (int64_t i = 0; i < np; ++i) {
      T* px = o + i * sp;
      if (bias)
        for (int64_t c = 0; c < nc; ++c) px[c * sc] = activate(px[c * sc] + bias[c], A);
      else
        for (int64_t c = 0; c < nc; ++c) px[c * sc] = activate(px[c * sc], A);
    }
  }
}

template <typename T>
void epilogue(T* o, int64_t nc, int64_t np, int64_t sc, int64_t sp, const T* bias, Activation act) {
  switch (act) {
    case Activation::None:
      if (bias) epilogue_impl<Activation::None>(o, nc, np, sc, sp, bias);
      return;
    case Activation::ReLU: return epilogue_impl<Activation::ReLU>(o, nc, np, sc, sp, bias);
    case Activation::ReLU6: return epilogue_impl<Activation::ReLU6>(o, nc, np, sc, sp, bias);
    case Activation::SiLU: return epilogue_impl<Activation::SiLU>(o, nc, np, sc, sp, bias);
    case Activation::GELU: return epilogue_impl<Activation::GELU>(o, nc, np, sc, sp, bias);
  }
}

// ---------------------------------------------------------------------------
// im2col / col2im, NCHW: col[(ci, r, s)][P] for the tile's segments.

// For kernel column s, the output columns [lo, hi) whose input column is inside [0, W).
struct ValidCols {
  std::vector<int64_t> lo, hi;
  explicit ValidCols(const ConvParams& p) : lo(p.S), hi(p.S) {
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t off = s * p.dil_w - p.pad_left;  // iw = ow·stride + off
      int64_t a = off >= 0 ? 0 : ceil_div(-off, p.stride_w);
      int64_t b = p.W - off <= 0 ? 0 : ceil_div(p.W - off, p.stride_w);
      a = std::min(a, p.Wo);
      b = std::min(std::max(b, a), p.Wo);
      lo[s] = a;
      hi[s] = b;
    }
  }
};

// Calls f(d, len, ow0, n, oh) for every output-row run of the tile, where d is
// the run's first element in a col row of length P.
template <typename F>
void for_each_row_run(const ConvParams& p, const std::vector<Segment>& segs, F f) {
  for (const auto& sg : segs) {
    int64_t q = sg.q, off = sg.off;
    const int64_t end = sg.q + sg.len;
    while (q < end) {
      const int64_t oh = q / p.Wo, ow0 = q % p.Wo, len = std::min(p.Wo - ow0, end - q);
      f(off, len, ow0, sg.n, oh);
      q += len;
      off += len;
    }
  }
}

template <typename T>
void im2col_nchw(const T* x, const Strides4& xs, const ConvParams& p,
                 const std::vector<Segment>& segs, int64_t P, T* col) {
  const ValidCols vc(p);
  const int64_t RS = p.R * p.S;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, RS * P));
  at::parallel_for(0, p.C, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t ci = c0; ci < c1; ++ci)
      for (int64_t r = 0; r < p.R; ++r)
        for (int64_t s = 0; s < p.S; ++s) {
          T* dst = col + (ci * RS + r * p.S + s) * P;
          const int64_t off_w = s * p.dil_w - p.pad_left;
          const int64_t lo = vc.lo[s], hi = vc.hi[s];
          for_each_row_run(p, segs, [&](int64_t off, int64_t len, int64_t ow0, int64_t n, int64_t oh) {
            T* d = dst + off;
            const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
            if (ih < 0 || ih >= p.H) {
              std::fill(d, d + len, T(0));
              return;
            }
            const int64_t ow1 = ow0 + len;
            const int64_t a = std::min(std::max(lo, ow0), ow1), b = std::min(std::max(hi, a), ow1);
            std::fill(d, d + (a - ow0), T(0));
            const T* xr = x + n * xs.n + ci * xs.c + ih * xs.h;
            if (p.stride_w == 1 && xs.w == 1) {
              if (b > a) std::memcpy(d + (a - ow0), xr + a + off_w, (b - a) * sizeof(T));
            } else {
              const int64_t step = p.stride_w * xs.w;
              const T* src = xr + (a * p.stride_w + off_w) * xs.w;
              for (int64_t ow = a; ow < b; ++ow, src += step) d[ow - ow0] = *src;
            }
            std::fill(d + (b - ow0), d + len, T(0));
          });
        }
  });
}

// dx[n, ci, ih, iw] += dcol[(ci, r, s)][p]. A thread owns whole channel
// planes, and each plane sums in the fixed order (r, s, p): no races, and the
// same result for any thread count.
template <typename T>
void col2im_nchw(const T* dcol, const ConvParams& p, const std::vector<Segment>& segs, int64_t P,
                 T* dx, const Strides4& ds) {
  const ValidCols vc(p);
  const int64_t RS = p.R * p.S;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, RS * P));
  at::parallel_for(0, p.C, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t ci = c0; ci < c1; ++ci)
      for (int64_t r = 0; r < p.R; ++r)
        for (int64_t s = 0; s < p.S; ++s) {
          const T* src = dcol + (ci * RS + r * p.S + s) * P;
          const int64_t off_w = s * p.dil_w - p.pad_left;
          const int64_t lo = vc.lo[s], hi = vc.hi[s];
          for_each_row_run(p, segs, [&](int64_t off, int64_t len, int64_t ow0, int64_t n, int64_t oh) {
            const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
            if (ih < 0 || ih >= p.H) return;
            const int64_t ow1 = ow0 + len;
            const int64_t a = std::min(std::max(lo, ow0), ow1), b = std::min(std::max(hi, a), ow1);
            const T* d = src + off - ow0;
            T* xr = dx + n * ds.n + ci * ds.c + ih * ds.h;
            if (p.stride_w == 1 && ds.w == 1) {
              T* o = xr + off_w;
              for (int64_t ow = a; ow < b; ++ow) o[ow] += d[ow];
            } else {
              for (int64_t ow = a; ow < b; ++ow) xr[(ow * p.stride_w + off_w) * ds.w] += d[ow];
            }
          });
        }
  });
}

// ---------------------------------------------------------------------------
// im2col / col2im, NHWC: col[p][(g, r, s, c)], rows of length C·R·S; each
// group's block of Kd = Cg·R·S columns is contiguous, with contiguous channel runs.

template <typename T>
void im2col_nhwc(const T* x, const Strides4& xs, const ConvParams& p, int64_t p0, int64_t p1,
                 T* col) {
  const int64_t kall = col_rows(p), hw = p.Ho * p.Wo, Cg = p.Cg;
  const int64_t grain = std::max<int64_t>(1, 16384 / kall);
  // Dense channels_last, one group, no horizontal dilation: the S taps of a
  // kernel row read S·C consecutive input values.
  const bool runs_merge = xs.c == 1 && xs.w == Cg && p.dil_w == 1;
  at::parallel_for(p0, p1, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t n = i / hw, q = i % hw, oh = q / p.Wo, ow = q % p.Wo;
      T* d = col + (i - p0) * kall;
      for (int64_t g = 0; g < p.groups; ++g) {
        const T* xg = x + n * xs.n + g * Cg * xs.c;
        for (int64_t r = 0; r < p.R; ++r) {
          T* dr = d + (g * p.R + r) * p.S * Cg;
          const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
          if (ih < 0 || ih >= p.H) {
            std::fill(dr, dr + p.S * Cg, T(0));
            continue;
          }
          // The taps s whose input column is inside [0, W) form one range [s0, s1).
          const int64_t iw0 = ow * p.stride_w - p.pad_left;
          const int64_t s0 = std::min(p.S, iw0 >= 0 ? 0 : ceil_div(-iw0, p.dil_w));
          const int64_t s1 = std::max(s0, std::min(p.S, p.W - iw0 <= 0 ? 0 : ceil_div(p.W - iw0, p.dil_w)));
          std::fill(dr, dr + s0 * Cg, T(0));
          const T* src = xg + ih * xs.h + (iw0 + s0 * p.dil_w) * xs.w;
          if (runs_merge) {  // the taps' channel runs are adjacent in x: one copy
            std::memcpy(dr + s0 * Cg, src, (s1 - s0) * Cg * sizeof(T));
          } else {
            for (int64_t s = s0; s < s1; ++s, src += p.dil_w * xs.w) {
              T* ds = dr + s * Cg;
              if (xs.c == 1)
                std::memcpy(ds, src, Cg * sizeof(T));
              else
                for (int64_t c = 0; c < Cg; ++c) ds[c] = src[c * xs.c];
            }
          }
          std::fill(dr + s1 * Cg, dr + p.S * Cg, T(0));
        }
      }
    }
  });
}

// dx (dense channels_last) += col2im(dcol). A work item owns a block of channels
// of one group in one input row (n, ih), so the scatter-add has no races even for
// stems (3 channels: one block), and sums into it in a fixed order: kernel rows r,
// then the tile's output pixels of output row (ih + pad - r·dil) / stride, then s.
template <typename T>
void col2im_nhwc(const T* dcol, const ConvParams& p, int64_t p0, int64_t p1, T* dx,
                 const Strides4& ds) {
  const int64_t kall = col_rows(p), hw = p.Ho * p.Wo, Cg = p.Cg;
  const int64_t blocks = ceil_div(Cg, kIm2colCol2imChannels);
  const int64_t n0 = p0 / hw, rows = (ceil_div(p1, hw) - n0) * p.H;  // input rows of the tile's images
  at::parallel_for(0, rows * p.groups * blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      const int64_t j = item / (p.groups * blocks), gb = item % (p.groups * blocks);
      const int64_t n = n0 + j / p.H, ih = j % p.H;
      const int64_t g = gb / blocks, c0 = (gb % blocks) * kIm2colCol2imChannels;
      const int64_t cn = std::min(kIm2colCol2imChannels, Cg - c0);
      T* xrow = dx + n * ds.n + ih * ds.h + (g * Cg + c0);
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t t = ih + p.pad_top - r * p.dil_h;  // oh * stride_h
        if (t < 0 || t % p.stride_h || t / p.stride_h >= p.Ho) continue;
        const int64_t row0 = n * hw + t / p.stride_h * p.Wo;  // the output row's first pixel
        const int64_t lo = std::max(row0, p0), hi = std::min(row0 + p.Wo, p1);
        for (int64_t i = lo; i < hi; ++i) {
          const int64_t ow = i - row0;
          const T* d = dcol + (i - p0) * kall + (g * p.R + r) * p.S * Cg + c0;
          for (int64_t s = 0; s < p.S; ++s) {
            const int64_t iw = ow * p.stride_w - p.pad_left + s * p.dil_w;
            if (iw < 0 || iw >= p.W) continue;
            const T* src = d + s * Cg;
            T* o = xrow + iw * ds.w;
            for (int64_t c = 0; c < cn; ++c) o[c] += src[c];
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// GEMM items: one BLAS call each, [m0, m0+mn) x [c0, c0+cn) of a tile's GEMM.

struct Item {
  int64_t g, m0, mn, seg, c0, cn;
};

// Cuts [0, L) into ceil(L / max_block) nearly equal blocks (balanced items).
int64_t even_block(int64_t L, int64_t max_block) {
  return L <= 0 ? 1 : ceil_div(L, ceil_div(L, std::max<int64_t>(1, max_block)));
}

// Items over groups x M blocks x segments (NCHW) x pixel/column blocks. Blocks
// of the inner dimension grow until an item holds kIm2colItemMinMacs, so the
// per-call cost (views, dispatch, MKL's packing) stays small for shallow
// reductions such as 1x1 convs with few channels.
std::vector<Item> make_items(int64_t groups, int64_t M, int64_t mblock,
                             const std::vector<int64_t>& seg_len, int64_t cblock, int64_t depth) {
  std::vector<Item> items;
  const int64_t mb = even_block(M, mblock);
  const int64_t min_c = ceil_div(kIm2colItemMinMacs, std::max<int64_t>(1, mb * depth));
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t m0 = 0; m0 < M; m0 += mb)
      for (int64_t si = 0; si < (int64_t)seg_len.size(); ++si) {
        const int64_t cb = even_block(seg_len[si], std::max(cblock, min_c));
        for (int64_t c0 = 0; c0 < seg_len[si]; c0 += cb)
          items.push_back({g, m0, std::min(mb, M - m0), si, c0, std::min(cb, seg_len[si] - c0)});
      }
  return items;
}

// NCHW 1x1 stride-1 forward: whole image planes (segments) by blocks of
// kIm2colPointwiseItemChannels output channels; a layer of a single item is
// cut in two, by channels or (few channels) by pixels.
std::vector<Item> pointwise_nchw_items(const ConvParams& p, const std::vector<int64_t>& seg_len) {
  const int64_t Kg = p.Kg(), plane = p.Ho * p.Wo;
  int64_t mblock = kIm2colPointwiseItemChannels, cblock = plane;
  if (p.N * p.groups * ceil_div(Kg, mblock) < 2) {
    if (Kg >= kIm2colPointwiseSplitChannels)
      mblock = ceil_div(Kg, 2);
    else
      cblock = ceil_div(plane, 2);
  }
  return make_items(p.groups, Kg, mblock, seg_len, cblock, p.gemm_k());
}

std::vector<int64_t> seg_lengths(const std::vector<Segment>& segs) {
  std::vector<int64_t> l;
  for (const auto& s : segs) l.push_back(s.len);
  return l;
}

template <typename F>
void run_items(const std::vector<Item>& items, F f) {
  at::parallel_for(0, (int64_t)items.size(), 1, [&](int64_t b, int64_t e) {
    SequentialBlasGuard one_blas_thread;
    for (int64_t i = b; i < e; ++i) f(items[i]);
  });
}

// The column buffer for one tile, recorded for im2col_last_workspace_bytes.
at::Tensor column_buffer(const ConvParams& p, const Tiling& tl, bool direct,
                         const at::TensorOptions& o) {
  if (direct || tl.count == 0) {
    g_last_workspace_bytes.store(0);
    return at::Tensor();
  }
  auto buf = at::empty({col_rows(p) * tl.tile}, o);
  g_last_workspace_bytes.store(buf.nbytes());
  return buf;
}

// ---------------------------------------------------------------------------
// Forward.

// One parallel region per call: items of every tile, tile by tile. A thread
// builds the column buffer of each tile it has items of in its own workspace
// (its items are consecutive, so at most one tile is built by both threads),
// so no barrier separates the copy from the GEMMs. The items, and so every
// output element's GEMM, do not depend on the thread count. A single tile
// (small layers) keeps one shared buffer, copied by all threads first.
struct TileItem {
  int64_t tile;
  Item it;
};

template <typename MakeItems>
std::vector<TileItem> tile_items(const Tiling& tl, MakeItems make) {
  std::vector<TileItem> all;
  for (int64_t t = 0; t < tl.count; ++t)
    for (const Item& it : make(t)) all.push_back({t, it});
  return all;
}

// Runs f(tile, item, column buffer of that tile) over all items. build(t, col)
// writes tile t's columns; none when the input is the column matrix (direct).
template <typename T, typename Build, typename F>
void run_tiles(const ConvParams& p, const Tiling& tl, bool direct, const at::TensorOptions& opts,
               const std::vector<TileItem>& all, Build build, F f) {
  const int64_t ws = col_rows(p) * tl.tile;
  if (direct || tl.count == 1) {
    at::Tensor buf = column_buffer(p, tl, direct, opts);
    T* col = direct ? nullptr : buf.data_ptr<T>();
    if (!direct) build(0, col);
    at::parallel_for(0, (int64_t)all.size(), 1, [&](int64_t b, int64_t e) {
      SequentialBlasGuard one_blas_thread;
      for (int64_t i = b; i < e; ++i) f(all[i].tile, all[i].it, col);
    });
    return;
  }
  g_last_workspace_bytes.store(ws * int64_t(sizeof(T)));  // per thread
  at::parallel_for(0, (int64_t)all.size(), 1, [&](int64_t b, int64_t e) {
    SequentialBlasGuard one_blas_thread;
    at::Tensor buf = at::empty({ws}, opts);
    T* col = buf.data_ptr<T>();
    int64_t built = -1;
    for (int64_t i = b; i < e; ++i) {
      if (all[i].tile != built) {
        built = all[i].tile;
        build(built, col);
      }
      f(all[i].tile, all[i].it, col);
    }
  });
}

template <typename T>
void forward_nchw(const at::Tensor& x, const at::Tensor& w, const T* bias, Activation act,
                  const ConvParams& p, at::Tensor& out) {
  const bool direct = is_pointwise(p);  // then x is canonical NCHW
  const Tiling tl = make_tiling(p, sizeof(T));
  const auto opts = x.options();
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  const Strides4 xs(x), ys(out);
  const int64_t Kd = p.gemm_k(), Kg = p.Kg(), Cg = p.Cg;
  std::vector<std::vector<Segment>> segs(tl.count);
  for (int64_t t = 0; t < tl.count; ++t)
    segs[t] = segments(p, t * tl.tile, std::min(tl.total, (t + 1) * tl.tile));
  const auto all = tile_items(tl, [&](int64_t t) {
    if (direct) return pointwise_nchw_items(p, seg_lengths(segs[t]));
    return make_items(p.groups, Kg, kIm2colItemChannels, seg_lengths(segs[t]), kIm2colItemPixels, Kd);
  });
  auto tile_pixels = [&](int64_t t) { return std::min(tl.total, (t + 1) * tl.tile) - t * tl.tile; };
  run_tiles<T>(p, tl, direct, opts, all,
               [&](int64_t t, T* col) { im2col_nchw(xp, xs, p, segs[t], tile_pixels(t), col); },
               [&](int64_t t, const Item& it, T* col) {
    const Segment& sg = segs[t][it.seg];
    const int64_t P = tile_pixels(t);
    const int64_t k = it.g * Kg + it.m0;
    const T* bp = direct ? xp + sg.n * xs.n + it.g * Cg * xs.c + sg.q + it.c0
                         : col + it.g * Kd * P + sg.off + it.c0;
    const int64_t ldb = direct ? xs.c : P;
    // Output pixel stride is ys.w: 1 for NCHW, K for channels_last.
    T* yo = yp + sg.n * ys.n + k * ys.c + (sg.q + it.c0) * ys.w;
    if (ys.w == 1) {
      gemm_rows(it.mn, it.cn, Kd, wp + k * Kd, Kd, bp, ldb, false, yo, ys.c, opts);
    } else {
      auto C = mat(yo, it.mn, it.cn, ys.c, ys.w, opts);
      at::mm_out(C, mat(wp + k * Kd, it.mn, Kd, Kd, 1, opts), mat(bp, Kd, it.cn, ldb, 1, opts));
    }
    epilogue(yo, it.mn, it.cn, ys.c, ys.w, bias ? bias + k : nullptr, act);
  });
}

template <typename T>
void forward_nhwc(const at::Tensor& x, const at::Tensor& wcl, const T* bias, Activation act,
                  const ConvParams& p, at::Tensor& out) {
  const bool direct = is_pointwise(p);  // then x is canonical channels_last
  const Tiling tl = make_tiling(p, sizeof(T));
  const auto opts = x.options();
  const T* xp = x.data_ptr<T>();
  const T* wp = wcl.data_ptr<T>();
  T* yp = out.data_ptr<T>();  // canonical channels_last: [N·Ho·Wo x K]
  const Strides4 xs(x);
  const int64_t Kd = p.gemm_k(), Kg = p.Kg(), Cg = p.Cg, K = p.K, kall = col_rows(p);
  auto tile_pixels = [&](int64_t t) { return std::min(tl.total, (t + 1) * tl.tile) - t * tl.tile; };
  // M = pixels here, cut like NCHW's pixel blocks; the inner blocks are channels.
  const auto all = tile_items(tl, [&](int64_t t) {
    return make_items(p.groups, tile_pixels(t), kIm2colItemPixels, {Kg}, kIm2colNhwcItemChannels, Kd);
  });
  run_tiles<T>(p, tl, direct, opts, all,
               [&](int64_t t, T* col) {
                 im2col_nhwc(xp, xs, p, t * tl.tile, t * tl.tile + tile_pixels(t), col);
               },
               [&](int64_t t, const Item& it, T* col) {
    const int64_t px = t * tl.tile + it.m0, k = it.g * Kg + it.c0;
    const T* ap = direct ? xp + px * p.C + it.g * Cg : col + it.m0 * kall + it.g * Kd;
    T* yo = yp + px * K + k;
    // B = Wcl_g^T: Wcl's rows (one per output channel) are its columns.
    gemm_rows(it.mn, it.cn, Kd, ap, direct ? p.C : kall, wp + k * Kd, Kd, true, yo, K, opts);
    epilogue(yo, it.cn, it.mn, 1, K, bias ? bias + k : nullptr, act);
  });
}

// ---------------------------------------------------------------------------
// grad_input.

template <typename T>
void grad_input_nchw(const at::Tensor& dy, const at::Tensor& w, const ConvParams& p, at::Tensor& dx) {
  const bool direct = is_pointwise(p);  // then dx = W^T @ dY, written in place
  const Tiling tl = make_tiling(p, sizeof(T));
  const auto opts = dy.options();
  at::Tensor buf = column_buffer(p, tl, direct, opts);
  T* dcol = direct ? nullptr : buf.data_ptr<T>();
  if (!direct) dx.zero_();
  const T* dyp = dy.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  const Strides4 ds(dy), xs(dx);
  const int64_t Kd = p.gemm_k(), Kg = p.Kg(), Cg = p.Cg;
  for (int64_t t = 0; t < tl.count; ++t) {
    const int64_t p0 = t * tl.tile, p1 = std::min(tl.total, p0 + tl.tile), P = p1 - p0;
    const auto segs = segments(p, p0, p1);
    const auto items = make_items(p.groups, Kd, kIm2colItemColumns, seg_lengths(segs),
                                  kIm2colItemPixels, Kg);
    run_items(items, [&](const Item& it) {
      const Segment& sg = segs[it.seg];
      const T* dyo = dyp + sg.n * ds.n + it.g * Kg * ds.c + sg.q + it.c0;
      T* o = direct ? dxp + sg.n * xs.n + (it.g * Cg + it.m0) * xs.c + sg.q + it.c0
                    : dcol + (it.g * Kd + it.m0) * P + sg.off + it.c0;
      // A = W_g^T: W_g's rows (one per output channel) are its columns.
      gemm(true, false, it.mn, it.cn, Kg, wp + it.g * Kg * Kd + it.m0, Kd, dyo, ds.c, false, o,
           direct ? xs.c : P, opts);
    });
    if (!direct) col2im_nchw(dcol, p, segs, P, dxp, xs);
  }
}

template <typename T>
void grad_input_nhwc(const at::Tensor& dy, const at::Tensor& wcl, const ConvParams& p, at::Tensor& dx) {
  const bool direct = is_pointwise(p);
  const Tiling tl = make_tiling(p, sizeof(T));
  const auto opts = dy.options();
  at::Tensor buf = column_buffer(p, tl, direct, opts);
  T* dcol = direct ? nullptr : buf.data_ptr<T>();
  if (!direct) dx.zero_();
  const T* dyp = dy.data_ptr<T>();
  const T* wp = wcl.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  const Strides4 xs(dx);
  const int64_t Kd = p.gemm_k(), Kg = p.Kg(), Cg = p.Cg, K = p.K, kall = col_rows(p);
  for (int64_t t = 0; t < tl.count; ++t) {
    const int64_t p0 = t * tl.tile, p1 = std::min(tl.total, p0 + tl.tile), P = p1 - p0;
    const auto items = make_items(p.groups, P, kIm2colItemPixels, {Kd}, kIm2colItemColumns, Kg);
    run_items(items, [&](const Item& it) {
      const int64_t px = p0 + it.m0;
      T* o = direct ? dxp + px * p.C + it.g * Cg + it.c0 : dcol + it.m0 * kall + it.g * Kd + it.c0;
      gemm(false, false, it.mn, it.cn, Kg, dyp + px * K + it.g * Kg, K,
           wp + it.g * Kg * Kd + it.c0, Kd, false, o, direct ? p.C : kall, opts);
    });
    if (!direct) col2im_nhwc(dcol, p, p0, p1, dxp, xs);
  }
}

// ---------------------------------------------------------------------------
// grad_weight: dW_g += dY_tile_g @ col_tile_g^T, tiles in order. An item owns a
// block of dW and one part of the tile's pixels (the reduction); the parts sum
// into their own partial dW (see kIm2colGradWeightMinItems), added in order at the end.

// The pixel tiling of grad_weight: im2col's, but a 1x1 layer that reads the input
// as its column matrix has no buffer to bound and runs all pixels as one tile.
Tiling grad_weight_tiling(const ConvParams& p, int64_t elem) {
  if (!is_pointwise(p)) return make_tiling(p, elem);
  Tiling t;
  t.total = t.tile = p.N * p.Ho * p.Wo;
  t.count = t.total > 0 ? 1 : 0;
  return t;
}

// The parts each tile's pixels are cut into: enough for kIm2colGradWeightMinItems
// items with `blocks` dW blocks per tile, within the part and memory limits.
int64_t grad_weight_parts(const ConvParams& p, const Tiling& tl, int64_t blocks, int64_t elem) {
  const int64_t want = ceil_div(kIm2colGradWeightMinItems, blocks);
  const int64_t by_pixels = tl.tile / kIm2colGradWeightMinPartPixels;
  const int64_t by_bytes = kIm2colGradWeightMaxPartialBytes / (p.K * p.gemm_k() * elem);
  return std::max<int64_t>(1, std::min({want, by_pixels, by_bytes}));
}

// Tile-relative pixel range [a, b) of part s of P pixels cut into S parts.
inline int64_t part_begin(int64_t P, int64_t S, int64_t s) { return P * s / S; }

// Runs f(item, part) over every dW block x pixel part of one tile, in parallel.
// Items of one part are adjacent, so a thread's consecutive items share its pixels.
template <typename F>
void run_parts(const std::vector<Item>& items, int64_t parts, F f) {
  const int64_t n = (int64_t)items.size() * parts;
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    SequentialBlasGuard one_blas_thread;
    for (int64_t i = b; i < e; ++i) f(items[i % items.size()], i / (int64_t)items.size());
  });
}

// out[i] = acc[0][i] + acc[1][i] + ... + acc[S-1][i], in that order.
template <typename T>
void sum_parts(const T* acc, int64_t S, int64_t n, T* out) {
  at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T v = acc[i];
      for (int64_t s = 1; s < S; ++s) v += acc[s * n + i];
      out[i] = v;
    }
  });
}

template <typename T>
void grad_weight_nchw(const at::Tensor& dy, const at::Tensor& x, const ConvParams& p, at::Tensor& dw) {
  const bool direct = is_pointwise(p);  // then x is canonical NCHW
  const Tiling tl = grad_weight_tiling(p, sizeof(T));
  const auto opts = x.options();
  at::Tensor buf = column_buffer(p, tl, direct, opts);
  T* col = direct ? nullptr : buf.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();  // canonical NCHW or channels_last
  const T* xp = x.data_ptr<T>();
  const Strides4 ds(dy), xs(x);
  const int64_t Kd = p.gemm_k(), Kg = p.Kg(), Cg = p.Cg, KKd = p.K * Kd;
  const auto items = make_items(p.groups, Kg, kIm2colItemChannels, {Kd}, kIm2colItemColumns, tl.tile);
  const int64_t S = grad_weight_parts(p, tl, items.size(), sizeof(T));
  // dw is [K x Kd] in the column order (c, r, s); partials beside it when S > 1. No
  // zeroing: the first tile writes every block (each part holds pixels of tile 0).
  at::Tensor acc = S == 1 ? dw : at::empty({S, p.K, Kd}, opts);
  T* ap = acc.data_ptr<T>();
  for (int64_t t = 0; t < tl.count; ++t) {
    const int64_t p0 = t * tl.tile, p1 = std::min(tl.total, p0 + tl.tile), P = p1 - p0;
    const auto segs = segments(p, p0, p1);
    if (!direct) im2col_nchw(xp, xs, p, segs, P, col);
    run_parts(items, S, [&](const Item& it, int64_t s) {
      const int64_t k = it.g * Kg + it.m0, a = part_begin(P, S, s), b = part_begin(P, S, s + 1);
      T* c = ap + s * KKd + k * Kd + it.c0;
      bool accumulate = t > 0;
      for (const auto& sg : segs) {  // the part's pixels, image by image
        const int64_t lo = std::max(a, sg.off), hi = std::min(b, sg.off + sg.len);
        if (lo >= hi) continue;
        const int64_t q = sg.q + lo - sg.off;
        // A = dY's rows [k x pixels]: pixels contiguous (NCHW) or channels (channels_last).
        const T* dyo = dyp + sg.n * ds.n + k * ds.c + q * ds.w;
        const bool dy_cl = ds.w != 1;
        // B = the columns transposed: pixels contiguous in x's planes or the col rows.
        const T* bo = direct ? xp + sg.n * xs.n + (it.g * Cg + it.c0) * xs.c + q
                             : col + (it.g * Kd + it.c0) * P + lo;
        gemm(dy_cl, true, it.mn, it.cn, hi - lo, dyo, dy_cl ? ds.w : ds.c, bo, direct ? xs.c : P,
             accumulate, c, Kd, opts);
        accumulate = true;
      }
    });
  }
  if (S > 1) sum_parts(ap, S, KKd, dw.data_ptr<T>());
}

template <typename T>
void grad_weight_nhwc(const at::Tensor& dy, const at::Tensor& x, const ConvParams& p, at::Tensor& dw) {
  const bool direct = is_pointwise(p);  // then x is canonical channels_last
  const Tiling tl = grad_weight_tiling(p, sizeof(T));
  const auto opts = x.options();
  at::Tensor buf = column_buffer(p, tl, direct, opts);
  T* col = direct ? nullptr : buf.data_ptr<T>();
  const int64_t Kd = p.gemm_k(), Kg = p.Kg(), Cg = p.Cg, K = p.K, kall = col_rows(p), KKd = K * Kd;
  const auto items = make_items(p.groups, Kg, kIm2colItemChannels, {Kd}, kIm2colItemColumns, tl.tile);
  const int64_t S = grad_weight_parts(p, tl, items.size(), sizeof(T));
  // Accumulate in the column order (k, r, s, c), one partial per part; reordered
  // into dW at the end, except for 1x1 kernels (the same order) of one part, which
  // sum into dW itself. No zeroing: the first tile writes every block (each part
  // holds pixels of tile 0).
  const bool in_place = S == 1 && Kd == Cg;
  at::Tensor acc = in_place ? dw : at::empty({S, K, Kd}, opts);
  const T* dyp = dy.data_ptr<T>();  // canonical channels_last: [N·Ho·Wo x K]
  const T* xp = x.data_ptr<T>();
  T* ap = acc.data_ptr<T>();
  const Strides4 xs(x);
  for (int64_t t = 0; t < tl.count; ++t) {
    const int64_t p0 = t * tl.tile, p1 = std::min(tl.total, p0 + tl.tile), P = p1 - p0;
    if (!direct) im2col_nhwc(xp, xs, p, p0, p1, col);
    run_parts(items, S, [&](const Item& it, int64_t s) {
      const int64_t k = it.g * Kg + it.m0, a = part_begin(P, S, s), b = part_begin(P, S, s + 1);
      if (a >= b) return;
      // A = dY_g^T (dY's rows are pixels), B = x or the column rows.
      const T* bo = direct ? xp + (p0 + a) * p.C + it.g * Cg + it.c0 : col + a * kall + it.g * Kd + it.c0;
      gemm(true, false, it.mn, it.cn, b - a, dyp + (p0 + a) * K + k, K, bo, direct ? p.C : kall,
           t > 0, ap + s * KKd + k * Kd + it.c0, Kd, opts);
    });
  }
  if (in_place) return;
  if (Kd == Cg) return sum_parts(ap, S, KKd, dw.data_ptr<T>());
  at::Tensor sum = acc[0];
  if (S > 1) {
    sum = at::empty({K, Kd}, opts);
    sum_parts(ap, S, KKd, sum.data_ptr<T>());
  }
  dw.copy_(sum.view({K, p.R, p.S, Cg}).permute({0, 3, 1, 2}));
}

}  // namespace

int64_t im2col_last_workspace_bytes() { return g_last_workspace_bytes.load(); }

int64_t im2col_workspace_bytes(const ConvParams& p, int64_t element_size) {
  FASTCONV_CHECK(element_size > 0, "fastconv.im2col_workspace_bytes: element_size must be positive");
  if (is_pointwise(p)) return 0;
  const Tiling tl = make_tiling(p, element_size);
  return tl.count == 0 ? 0 : col_rows(p) * tl.tile * element_size;
}

at::Tensor im2col_conv2d(const at::Tensor& input, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         c10::string_view activation) {
  const char* op = "fastconv::im2col_conv2d";
  const auto p = check_forward_args(op, input, weight, bias, stride, padding, dilation, groups);
  const auto act = parse_activation(std::string(activation));
  const auto out_fmt = conv_memory_format(input, weight);
  const bool nhwc = is_channels_last(input);
  const auto fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // 1x1 layers on few pixels run our AVX-512 GEMM, which packs its panels per
  // task (MKL's small-M sgemm is weakest there); the rest MKL's sgemm below.
  // Modules cache the panels and run pointwise_conv2d_packed.
  if (fmt == out_fmt && pointwise_gemm_unpacked_applies(p, input.scalar_type(), fmt))
    return pointwise_gemm_forward_unpacked(input, weight, bias, p, act, fmt);
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), out_fmt);
  if (out.numel() == 0) return out;
  // The general path reads the input through its strides; the 1x1 path uses
  // it as a matrix, so it must be dense.
  const at::Tensor x = is_pointwise(p) ? canonical(input, fmt) : input;
  const at::Tensor w = canonical(weight, fmt);
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "im2col_conv2d", [&] {
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    if (nhwc)
      forward_nhwc<scalar_t>(x, w, bp, act, p, out);
    else
      forward_nchw<scalar_t>(x, w, bp, act, p, out);
  });
  return out;
}

// The 1x1 GEMM's weight panels, packed once (modules cache them).
at::Tensor pointwise_pack_weight(const at::Tensor& weight) {
  const char* op = "fastconv::pointwise_pack_weight";
  check_float_cpu(op, "weight", weight);
  FASTCONV_CHECK(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1, op,
              ": expected a 1x1 weight (K, C, 1, 1), got shape ", weight.sizes());
  return pointwise_pack_panels(weight);
}

namespace {
ConvParams check_pointwise_packed(const char* op, const at::Tensor& input, const at::Tensor& panels,
                                  at::IntArrayRef weight_size, const c10::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups) {
  const auto p = make_params(op, input.sizes(), weight_size, stride, padding, dilation, groups);
  check_inputs(op, input, panels, bias, p);
  FASTCONV_CHECK(p.groups == 1 && p.R == 1 && p.S == 1, op,
              ": packed panels hold a 1x1 weight of one group, got weight_size ", weight_size,
              " and groups=", groups);
  FASTCONV_CHECK(panels.sizes() == at::IntArrayRef(pointwise_panels_shape(p.K, p.C)), op,
              ": packed_weight has shape ", panels.sizes(), ", expected ",
              at::IntArrayRef(pointwise_panels_shape(p.K, p.C)),
              " (from pointwise_pack_weight(weight))");
  FASTCONV_CHECK(panels.is_contiguous(), op, ": packed_weight must be contiguous");
  return p;
}
}  // namespace

at::Tensor pointwise_conv2d_packed(const at::Tensor& input, const at::Tensor& packed_weight,
                                   at::IntArrayRef weight_size, const c10::optional<at::Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups,
                                   c10::string_view activation) {
  const char* op = "fastconv::pointwise_conv2d_packed";
  const auto p = check_pointwise_packed(op, input, packed_weight, weight_size, bias, stride,
                                        padding, dilation, groups);
  const auto act = parse_activation(std::string(activation));
  // The panels have no memory format of their own: the output follows the input.
  const auto fmt = input.suggest_memory_format();
  if (pointwise_gemm_applies(p, input.scalar_type()))
    return pointwise_gemm_forward(input, packed_weight, bias, p, act, fmt);
  // Another ISA (or padding, or an empty output) since the panels were packed.
  const auto w = pointwise_unpack_panels(packed_weight, p.K).contiguous(fmt);
  return im2col_conv2d(input, w, bias, stride, padding, dilation, groups, activation);
}

at::Tensor pointwise_naive_conv2d(const at::Tensor& input, const at::Tensor& packed_weight,
                                  at::IntArrayRef weight_size, const c10::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups,
                                  c10::string_view activation) {
  const char* op = "fastconv::pointwise_naive_conv2d";
  const auto p = check_pointwise_packed(op, input, packed_weight, weight_size, bias, stride,
                                        padding, dilation, groups);
  FASTCONV_CHECK(p.pad_top == 0 && p.pad_bottom == 0 && p.pad_left == 0 && p.pad_right == 0, op,
              ": the pointwise GEMM takes no padding, got ", padding);
  return pointwise_gemm_naive(input, packed_weight, bias, p, parse_activation(std::string(activation)),
                              input.suggest_memory_format());
}

at::Tensor im2col_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                    at::IntArrayRef input_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups) {
  const char* op = "fastconv::im2col_conv2d_grad_input";
  const auto p = check_grad_input_args(op, grad_output, weight, input_size, stride, padding,
                                       dilation, groups);
  const auto fmt = grad_output.suggest_memory_format();
  auto gin = new_output(input_size, grad_output.options(), fmt);
  if (gin.numel() == 0) return gin;
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor dy = canonical(grad_output, fmt);
  const at::Tensor w = canonical(weight, fmt);
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "im2col_conv2d_grad_input", [&] {
    if (nhwc)
      grad_input_nhwc<scalar_t>(dy, w, p, gin);
    else
      grad_input_nchw<scalar_t>(dy, w, p, gin);
  });
  return gin;
}

at::Tensor im2col_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                     at::IntArrayRef weight_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups) {
  const char* op = "fastconv::im2col_conv2d_grad_weight";
  const auto p = check_grad_weight_args(op, grad_output, input, weight_size, stride, padding,
                                        dilation, groups);
  auto gw = new_output(weight_size, input.options(), at::MemoryFormat::Contiguous);
  if (p.N * p.Ho * p.Wo == 0) {  // empty batch: no pixel contributes
    gw.zero_();
    return gw;
  }
  const bool nhwc = is_channels_last(input);
  const auto in_fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = is_pointwise(p) ? canonical(input, in_fmt) : input;
  // NHWC needs dY as one [N·Ho·Wo x K] matrix; NCHW reads per image, either layout.
  const at::Tensor dy = canonical(grad_output, nhwc ? at::MemoryFormat::ChannelsLast
                                                    : grad_output.suggest_memory_format());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "im2col_conv2d_grad_weight", [&] {
    if (nhwc)
      grad_weight_nhwc<scalar_t>(dy, x, p, gw);
    else
      grad_weight_nchw<scalar_t>(dy, x, p, gw);
  });
  return gw;
}

// ---------------------------------------------------------------------------
// The plain version of the same algorithm, kept as the readable reference:
// one column matrix for the whole batch, col[(ci, r, s)][(n, oh, ow)], then a
// triple-loop GEMM per group. No tiling, no threads, no BLAS.

at::Tensor im2col_conv2d_naive(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view activation) {
  const char* op = "fastconv::im2col_naive_conv2d";
  const auto p = check_forward_args(op, input, weight, bias, stride, padding, dilation, groups);
  const auto act = parse_activation(std::string(activation));
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), conv_memory_format(input, weight));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "im2col_conv2d_naive", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const Strides4 xs(input), ws(weight), ys(out);
    const int64_t npix = p.N * p.Ho * p.Wo, hw = p.Ho * p.Wo, Kd = p.gemm_k();
    std::vector<scalar_t> col(col_rows(p) * npix);
    for (int64_t ci = 0; ci < p.C; ++ci)
      for (int64_t r = 0; r < p.R; ++r)
        for (int64_t s = 0; s < p.S; ++s)
          for (int64_t i = 0; i < npix; ++i) {
            const int64_t n = i / hw, oh = (i % hw) / p.Wo, ow = i % p.Wo;
            const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
            const int64_t iw = ow * p.stride_w - p.pad_left + s * p.dil_w;
            const bool inside = ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
            col[((ci * p.R + r) * p.S + s) * npix + i] =
                inside ? x[n * xs.n + ci * xs.c + ih * xs.h + iw * xs.w] : scalar_t(0);
          }
    for (int64_t k = 0; k < p.K; ++k) {
      const int64_t g = k / p.Kg();
      for (int64_t i = 0; i < npix; ++i) {
        scalar_t acc = 0;
        for (int64_t j = 0; j < Kd; ++j) {
          const int64_t c = j / (p.R * p.S), r = (j / p.S) % p.R, s = j % p.S;
          acc += w[k * ws.n + c * ws.c + r * ws.h + s * ws.w] * col[(g * Kd + j) * npix + i];
        }
        const int64_t n = i / hw, oh = (i % hw) / p.Wo, ow = i % p.Wo;
        y[n * ys.n + k * ys.c + oh * ys.h + ow * ys.w] = acc;
      }
    }
  });
  bias_activation_(out, bias, act);
  return out;
}

}  // namespace fastconv
