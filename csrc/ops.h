// Declarations of every CPU algorithm's entry points. Each algorithm family
// implements these three functions in its own file (reference.cpp, im2col.cpp,
// direct.cpp, depthwise.cpp); fastconv.cpp binds them to torch.library ops.
#pragma once

#include <ATen/ATen.h>

#include "conv_params.h"

#define FASTCONV_DECLARE_ALGO(name)                                                            \
  at::Tensor name##_conv2d(const at::Tensor& input, const at::Tensor& weight,                  \
                           const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,      \
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,  \
                           c10::string_view activation);                                       \
  at::Tensor name##_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight, \
                                      at::IntArrayRef input_size, at::IntArrayRef stride,      \
                                      at::IntArrayRef padding, at::IntArrayRef dilation,       \
                                      int64_t groups);                                         \
  at::Tensor name##_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, \
                                       at::IntArrayRef weight_size, at::IntArrayRef stride,    \
                                       at::IntArrayRef padding, at::IntArrayRef dilation,      \
                                       int64_t groups);

namespace fastconv {

FASTCONV_DECLARE_ALGO(reference)
FASTCONV_DECLARE_ALGO(im2col)
FASTCONV_DECLARE_ALGO(direct)
FASTCONV_DECLARE_ALGO(depthwise)

// Bytes of column buffer im2col allocates for this layer (bounded by tiling).
int64_t im2col_workspace_bytes(const ConvParams& p, int64_t element_size);

}  // namespace fastconv
