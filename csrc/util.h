// Small helpers shared by the C++ kernels: integer division that rounds
// negatives correctly (padding offsets are signed), and a tensor's 4-D strides.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastconv {

// b > 0. Rounds toward -inf / +inf for negative a as well.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }
inline int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Element strides of a 4-D (N, C, H, W) tensor in any memory format.
struct Strides4 {
  int64_t n = 0, c = 0, h = 0, w = 0;
  Strides4() = default;
  explicit Strides4(const at::Tensor& t)
      : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
  int64_t at(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

}  // namespace fastconv
