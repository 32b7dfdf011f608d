// Shared argument checking and shape logic for every fastconv CPU op.
// People call the ops directly (torch.ops.fastconv.*), so every check is a
// FASTCONV_CHECK (check.h) with a message, never an assert.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>

namespace fastconv {

// Convolution geometry after normalization. Padding may be asymmetric
// (PyTorch's 'same' for even kernels), so it is kept per side.
struct ConvParams {
  int64_t N, C, H, W;       // input
  int64_t K, Cg, R, S;      // weight: K output channels, Cg = C / groups
  int64_t Ho, Wo;           // output
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t dil_h, dil_w;
  int64_t groups;
  int64_t Kg() const { return K / groups; }
  // Reduction length of the equivalent GEMM: (C/g)·R·S.
  int64_t gemm_k() const { return Cg * R * S; }
};

// input_size = {N, C, H, W}, weight_size = {K, C/g, R, S}.
ConvParams make_params(const char* op, at::IntArrayRef input_size, at::IntArrayRef weight_size,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups);

// Device, dtype and bias checks shared by forward ops.
void check_inputs(const char* op, const at::Tensor& input, const at::Tensor& weight,
                  const c10::optional<at::Tensor>& bias, const ConvParams& p);
void check_same(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                const at::Tensor& b);
void check_float_cpu(const char* op, const char* name, const at::Tensor& t);
// Shared checks of a forward op: geometry, dtypes/devices, bias shape.
ConvParams check_forward_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
// Shared checks of the two gradient ops: geometry, dtypes/devices, grad_output's shape.
ConvParams check_grad_input_args(const char* op, const at::Tensor& grad_output,
                                 const at::Tensor& weight, at::IntArrayRef input_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups);
ConvParams check_grad_weight_args(const char* op, const at::Tensor& grad_output,
                                  const at::Tensor& input, at::IntArrayRef weight_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups);

// Whether a 4-D tensor is laid out NHWC (also for empty tensors).
bool is_channels_last(const at::Tensor& t);
// PyTorch's rule: the output is channels_last when input or weight is.
at::MemoryFormat conv_memory_format(const at::Tensor& input, const at::Tensor& weight);

// A new output tensor; filled with NaN when debug poisoning is on, so that
// elements a kernel fails to write show up in tests.
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                      at::MemoryFormat format);

void set_debug_poison(bool on);
bool debug_poison();

// Fused epilogue activations (the same set as the Triton kernels).
enum class Activation { None, ReLU, ReLU6, SiLU, GELU };
Activation parse_activation(const std::string& name);

// One element of the fused epilogue; kernels call it on their accumulators.
template <typename T>
inline T activate(T v, Activation act) {
  switch (act) {
    case Activation::None: return v;
    // Written so that NaN passes through, as torch.relu / F.relu6 do.
    case Activation::ReLU: return v < T(0) ? T(0) : v;
    case Activation::ReLU6: return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
    case Activation::SiLU: return v / (T(1) + std::exp(-v));
    case Activation::GELU: return T(0.5) * v * (T(1) + std::erf(v * T(0.70710678118654752440)));
  }
  return v;
}

// out = act(out + bias) over an NCHW or NHWC output, in one pass.
void bias_activation_(at::Tensor& out, const c10::optional<at::Tensor>& bias, Activation act);

}  // namespace fastconv
