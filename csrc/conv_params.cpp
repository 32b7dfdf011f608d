#include "conv_params.h"

#include "check.h"

#include <cmath>
#include <limits>

namespace fastconv {

namespace {
std::atomic<bool> g_poison{false};

// *out = a * b + c, true when any step overflows int64.
bool mul_add_overflows(int64_t a, int64_t b, int64_t c, int64_t* out) {
  int64_t m = 0;
  return __builtin_mul_overflow(a, b, &m) || __builtin_add_overflow(m, c, out);
}

// *out = a + b + c, true when any step overflows int64.
bool add3_overflows(int64_t a, int64_t b, int64_t c, int64_t* out) {
  int64_t t = 0;
  return __builtin_add_overflow(a, b, &t) || __builtin_add_overflow(t, c, out);
}
}  // namespace

void set_debug_poison(bool on) { g_poison.store(on); }
bool debug_poison() { return g_poison.load(); }

ConvParams make_params(const char* op, at::IntArrayRef input_size, at::IntArrayRef weight_size,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups) {
  FASTCONV_CHECK(input_size.size() == 4, op, ": expected 4-D input (N, C, H, W), got ",
              input_size.size(), "-D");
  FASTCONV_CHECK(weight_size.size() == 4, op, ": expected 4-D weight (K, C/groups, R, S), got ",
              weight_size.size(), "-D");
  FASTCONV_CHECK(stride.size() == 2, op, ": stride must have 2 elements, got ", stride.size());
  FASTCONV_CHECK(dilation.size() == 2, op, ": dilation must have 2 elements, got ", dilation.size());
  FASTCONV_CHECK(padding.size() == 4, op,
              ": padding must have 4 elements (top, bottom, left, right), got ", padding.size());
  FASTCONV_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  for (auto s : stride) FASTCONV_CHECK(s > 0, op, ": stride must be positive, got ", stride);
  for (auto d : dilation) FASTCONV_CHECK(d > 0, op, ": dilation must be positive, got ", dilation);
  for (auto q : padding) FASTCONV_CHECK(q >= 0, op, ": padding must be non-negative, got ", padding);
  for (auto s : input_size) FASTCONV_CHECK(s >= 0, op, ": negative input size ", input_size);
  for (auto s : weight_size) FASTCONV_CHECK(s > 0, op, ": weight sizes must be positive, got ", weight_size);

  ConvParams p;
  p.N = input_size[0]; p.C = input_size[1]; p.H = input_size[2]; p.W = input_size[3];
  p.K = weight_size[0]; p.Cg = weight_size[1]; p.R = weight_size[2]; p.S = weight_size[3];
  p.stride_h = stride[0]; p.stride_w = stride[1];
  p.pad_top = padding[0]; p.pad_bottom = padding[1]; p.pad_left = padding[2]; p.pad_right = padding[3];
  p.dil_h = dilation[0]; p.dil_w = dilation[1];
  p.groups = groups;

  FASTCONV_CHECK(p.C % groups == 0, op, ": groups=", groups, " does not divide in_channels=", p.C);
  FASTCONV_CHECK(p.K % groups == 0, op, ": groups=", groups, " does not divide out_channels=", p.K);
  FASTCONV_CHECK(p.Cg * groups == p.C, op, ": weight expects ", p.Cg * groups,
              " input channels (weight.size(1)=", p.Cg, " x groups=", groups, "), input has ", p.C);

  // Every size below must fit in int64 before it is formed: a wrapped padded size or
  // kernel extent would pass the checks that follow with a wrong (even negative) output.
  int64_t eff_r = 0, eff_s = 0, hp = 0, wp = 0;
  const bool overflow =
      mul_add_overflows(p.dil_h, p.R - 1, 1, &eff_r) || mul_add_overflows(p.dil_w, p.S - 1, 1, &eff_s) ||
      add3_overflows(p.H, p.pad_top, p.pad_bottom, &hp) ||
      add3_overflows(p.W, p.pad_left, p.pad_right, &wp);
  FASTCONV_CHECK(!overflow, op, ": the padded input (", input_size[2], " + ", padding[0], " + ",
              padding[1], ", ", input_size[3], " + ", padding[2], " + ", padding[3],
              ") or the dilated kernel (", dilation, " x (", weight_size.slice(2), " - 1) + 1) "
              "does not fit in int64");
  FASTCONV_CHECK(eff_r <= hp && eff_s <= wp, op, ": kernel size (", eff_r, ", ", eff_s,
              ") after dilation is larger than the padded input (", hp, ", ", wp, ")");
  p.Ho = (hp - eff_r) / p.stride_h + 1;
  p.Wo = (wp - eff_s) / p.stride_w + 1;
  int64_t numel = 1;
  bool numel_overflow = false;
  for (int64_t d : {p.N, p.K, p.Ho, p.Wo}) numel_overflow |= __builtin_mul_overflow(numel, d, &numel);
  FASTCONV_CHECK(!numel_overflow, op, ": the output [", p.N, ", ", p.K, ", ", p.Ho, ", ", p.Wo,
              "] has more elements than int64 can count");
  return p;
}

void check_float_cpu(const char* op, const char* name, const at::Tensor& t) {
  FASTCONV_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  FASTCONV_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64 on the CPU, got ", t.scalar_type());
}

void check_same(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                const at::Tensor& b) {
  FASTCONV_CHECK(a.device() == b.device(), op, ": ", name_a, " is on ", a.device(), " but ", name_b,
              " is on ", b.device());
  FASTCONV_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", name_a, " is ", a.scalar_type(),
              " but ", name_b, " is ", b.scalar_type(), "; they must have the same dtype");
}

namespace {
void check_grad_output(const char* op, const at::Tensor& grad_output, const ConvParams& p) {
  FASTCONV_CHECK(grad_output.dim() == 4 && grad_output.size(0) == p.N && grad_output.size(1) == p.K &&
                  grad_output.size(2) == p.Ho && grad_output.size(3) == p.Wo,
              op, ": grad_output has shape ", grad_output.sizes(), ", expected [", p.N, ", ", p.K,
              ", ", p.Ho, ", ", p.Wo, "]");
}
}  // namespace

ConvParams check_forward_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto p = make_params(op, input.sizes(), weight.sizes(), stride, padding, dilation, groups);
  check_inputs(op, input, weight, bias, p);
  return p;
}

ConvParams check_grad_input_args(const char* op, const at::Tensor& grad_output,
                                 const at::Tensor& weight, at::IntArrayRef input_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups) {
  const auto p = make_params(op, input_size, weight.sizes(), stride, padding, dilation, groups);
  check_float_cpu(op, "grad_output", grad_output);
  check_same(op, "grad_output", grad_output, "weight", weight);
  check_grad_output(op, grad_output, p);
  return p;
}

ConvParams check_grad_weight_args(const char* op, const at::Tensor& grad_output,
                                  const at::Tensor& input, at::IntArrayRef weight_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups) {
  const auto p = make_params(op, input.sizes(), weight_size, stride, padding, dilation, groups);
  check_float_cpu(op, "grad_output", grad_output);
  check_same(op, "grad_output", grad_output, "input", input);
  check_grad_output(op, grad_output, p);
  return p;
}

void check_inputs(const char* op, const at::Tensor& input, const at::Tensor& weight,
                  const c10::optional<at::Tensor>& bias, const ConvParams& p) {
  check_float_cpu(op, "input", input);
  check_same(op, "input", input, "weight", weight);
  if (bias.has_value() && bias->defined()) {
    check_same(op, "input", input, "bias", *bias);
    FASTCONV_CHECK(bias->dim() == 1 && bias->size(0) == p.K, op, ": bias must have shape (", p.K,
                ",), got ", bias->sizes());
  }
}

bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::MemoryFormat conv_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  if (is_channels_last(input) || is_channels_last(weight)) return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                      at::MemoryFormat format) {
  auto out = at::empty(sizes, options.memory_format(format));
  if (debug_poison()) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

Activation parse_activation(const std::string& name) {
  if (name == "none" || name.empty()) return Activation::None;
  if (name == "relu") return Activation::ReLU;
  if (name == "relu6") return Activation::ReLU6;
  if (name == "silu") return Activation::SiLU;
  if (name == "gelu") return Activation::GELU;
  FASTCONV_CHECK(false, "fastconv: unknown activation '", name,
              "'; expected one of none, relu, relu6, silu, gelu");
}

void bias_activation_(at::Tensor& out, const c10::optional<at::Tensor>& bias, Activation act) {
  const bool has_bias = bias.has_value() && bias->defined();
  if (!has_bias && act == Activation::None) return;
  const int64_t N = out.size(0), K = out.size(1), HW = out.size(2) * out.size(3);
  const bool nhwc = !out.is_contiguous() && out.is_contiguous(at::MemoryFormat::ChannelsLast);
  FASTCONV_CHECK(out.is_contiguous() || nhwc, "fastconv: epilogue expects a dense output");
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "bias_activation_", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    const scalar_t* bp = has_bias ? b.data_ptr<scalar_t>() : nullptr;
    if (nhwc) {
      at::parallel_for(0, N * HW, 256, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t k = 0; k < K; ++k) {
            scalar_t v = o[i * K + k] + (bp ? bp[k] : scalar_t(0));
            o[i * K + k] = activate(v, act);
          }
      });
    } else {
      at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
        for (int64_t nk = begin; nk < end; ++nk) {
          const scalar_t bv = bp ? bp[nk % K] : scalar_t(0);
          scalar_t* row = o + nk * HW;
          for (int64_t i = 0; i < HW; ++i) row[i] = activate(row[i] + bv, act);
        }
      });
    }
  });
}

}  // namespace fastconv
