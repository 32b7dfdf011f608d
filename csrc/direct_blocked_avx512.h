// Entry points of direct's AVX-512 tiles over packed input rows
// (direct_blocked_avx512.cpp), called from direct.cpp's ops.
#pragma once

#include <ATen/ATen.h>

#include "conv_params.h"

namespace fastconv {

// How the forward reads its weight: as given ([K][Cg][R][S] of this problem), or
// as the weight of the layer whose stride-1 grad_input this problem is (channels
// of each group transposed, taps flipped), read in place without a copy.
enum class TapOrder { AsGiven, Flipped };

// Narrow groups across lanes (Cg == Kg in 2, 4, 8), or Cg and Kg multiples of 16.
bool direct_blocked_avx512_applies(const ConvParams& p, at::ScalarType dtype);
at::Tensor direct_blocked_avx512_forward(const at::Tensor& input, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias,
                                         const ConvParams& p, Activation act,
                                         at::MemoryFormat fmt,
                                         TapOrder tap_order = TapOrder::AsGiven);
at::Tensor direct_blocked_avx512_grad_weight(const at::Tensor& grad_output,
                                             const at::Tensor& input, const ConvParams& p);

}  // namespace fastconv
