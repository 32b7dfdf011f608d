// direct: placeholder that forwards to the reference loop nest until the tuned
// kernel lands (being written in this session).
#include "ops.h"

namespace fastconv {

at::Tensor direct_conv2d(const at::Tensor& input, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view activation) {
  return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, activation);
}
at::Tensor direct_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                  at::IntArrayRef input_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return reference_conv2d_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups);
}
at::Tensor direct_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef weight_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return reference_conv2d_grad_weight(grad_output, input, weight_size, stride, padding, dilation, groups);
}
}  // namespace fastconv
