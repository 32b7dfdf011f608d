// Entry points of direct's AVX-512 tiles over packed input rows
// (direct_blocked_avx512.cpp), called from direct.cpp's ops.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "conv_params.h"

namespace fastconv {

// How the forward reads its weight: as given ([K][Cg][R][S] of this problem), or
// as the weight of the layer whose grad_input this problem is (or one stride
// phase of it): channels of each group transposed, and this problem's tap (r, s)
// read from that weight's tap (rows[r], cols[s]) (flipped, every stride-th tap),
// in place, without a copy.
struct WeightTaps {
  bool transposed = false;
  std::vector<int64_t> rows, cols;  // empty: the identity
};

// Narrow groups across lanes (Cg == Kg in 2, 4, 8), or Cg and Kg multiples of 16.
bool direct_blocked_avx512_applies(const ConvParams& p, at::ScalarType dtype);
at::Tensor direct_blocked_avx512_forward(const at::Tensor& input, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias,
                                         const ConvParams& p, Activation act,
                                         at::MemoryFormat fmt,
                                         const WeightTaps& taps = WeightTaps());
// The same into out ([N][K][Ho][Wo] with any strides, e.g. one stride phase of a
// grad_input), no bias, no activation.
void direct_blocked_avx512_forward_into(const at::Tensor& input, const at::Tensor& weight,
                                        const ConvParams& p, const WeightTaps& taps,
                                        at::Tensor& out);
// The weight in the tiles' layout, packed once (modules cache it), and back.
bool direct_blocked_avx512_weight_applies(int64_t K, int64_t Cg, int64_t groups,
                                          at::ScalarType dtype);
std::vector<int64_t> direct_blocked_avx512_packed_shape(int64_t K, int64_t Cg, int64_t R,
                                                        int64_t S, int64_t groups);
at::Tensor direct_blocked_avx512_pack(const at::Tensor& weight, int64_t groups);
at::Tensor direct_blocked_avx512_unpack(const at::Tensor& packed, at::IntArrayRef weight_size,
                                        int64_t groups);
at::Tensor direct_blocked_avx512_forward_packed(const at::Tensor& input, const at::Tensor& packed,
                                                const c10::optional<at::Tensor>& bias,
                                                const ConvParams& p, Activation act,
                                                at::MemoryFormat fmt);
at::Tensor direct_blocked_avx512_grad_weight(const at::Tensor& grad_output,
                                             const at::Tensor& input, const ConvParams& p);

}  // namespace fastconv
