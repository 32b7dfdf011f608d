// Autograd for the CPU families' forward ops (<a>_conv2d), in C++.
//
// Why here and not only through torch.library.register_autograd (fastconv/_ops.py):
// the Python autograd kernel costs tens of microseconds per call even when nothing
// needs a gradient (a Python frame entered from the dispatcher, a pytree walk, a
// boxed redispatch). This kernel decides in C++: with grad mode off or no input
// requiring grad it redispatches straight to the CPU kernel; otherwise a
// torch::autograd::Function whose backward mirrors _ops.py exactly (the family's
// _grad_input/_grad_weight ops; ReLU/ReLU6 gradients from the output; SiLU/GELU
// recompute the pre-activation with the same forward kernel).
// _ops.register_family sees this kernel and skips the Python registration for
// these ops; the Triton families (defined in Python) keep the Python one.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace fastconv {
namespace {

using at::IntArrayRef;
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = Tensor(const Tensor&, const Tensor&, const c10::optional<Tensor>&, IntArrayRef,
                          IntArrayRef, IntArrayRef, int64_t, c10::string_view);
using GradSig = Tensor(const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef,
                       IntArrayRef, int64_t);

// The family's three ops, looked up once (the dispatcher owns them for the process).
struct FamilyOps {
  c10::TypedOperatorHandle<ForwardSig> fwd;
  c10::TypedOperatorHandle<GradSig> grad_input;
  c10::TypedOperatorHandle<GradSig> grad_weight;

  explicit FamilyOps(const std::string& family)
      : fwd(find<ForwardSig>(family + "_conv2d")),
        grad_input(find<GradSig>(family + "_conv2d_grad_input")),
        grad_weight(find<GradSig>(family + "_conv2d_grad_weight")) {}

  template <class Sig>
  static c10::TypedOperatorHandle<Sig> find(const std::string& name) {
    return c10::Dispatcher::singleton()
        .findSchemaOrThrow(("fastconv::" + name).c_str(), "")
        .typed<Sig>();
  }
};

// <family>_conv2d_grad_input / _grad_weight(grad_output, other, size, stride, padding,
// dilation, groups).
Tensor call_grad(const c10::TypedOperatorHandle<GradSig>& op, const Tensor& grad,
                 const Tensor& other, c10::SymIntArrayRef size, const std::vector<int64_t>& stride,
                 const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                 int64_t groups) {
  torch::jit::Stack stack;
  stack.reserve(7);
  stack.emplace_back(grad);
  stack.emplace_back(other);
  stack.emplace_back(size);  // an int list when every size is concrete
  stack.emplace_back(stride);
  stack.emplace_back(padding);
  stack.emplace_back(dilation);
  stack.emplace_back(groups);
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

template <const char* Family>
const FamilyOps& family_ops() {
  static const FamilyOps ops(Family);
  return ops;
}

template <const char* Family>
struct ConvFunction : public torch::autograd::Function<ConvFunction<Family>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                        const c10::optional<Tensor>& bias, IntArrayRef stride,
                        IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                        c10::string_view activation) {
    // Function::apply only turns grad mode off; skip the autograd kernel outright.
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor out = family_ops<Family>().fwd.call(input, weight, bias, stride, padding, dilation,
                                               groups, activation);
    const std::string act(activation);
    ctx->saved_data["activation"] = act;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    // ReLU and ReLU6 gradients follow from the output; SiLU/GELU recompute.
    const bool keep_out = act == "relu" || act == "relu6";
    ctx->save_for_backward({input, weight, bias.has_value() ? *bias : Tensor(),
                            keep_out ? out : Tensor()});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& input = saved[0];
    const Tensor& weight = saved[1];
    const Tensor& bias = saved[2];
    const std::string act = ctx->saved_data["activation"].toStringRef();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const auto& ops = family_ops<Family>();

    // create_graph=False runs this with grad mode off: nothing to record, so skip the
    // autograd kernels of the ops below (the grad ops' is Python, fastconv/_ops.py).
    // With create_graph=True every op here is differentiable, the grad ops included.
    c10::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();

    Tensor grad = grads[0];
    // torch's threshold_backward / hardtanh_backward: a NaN output passes the gradient
    // through, and a NaN or Inf gradient is never multiplied by 0.
    if (act == "relu") {
      grad = at::where(saved[3].le(0), 0, grad);
    } else if (act == "relu6") {
      grad = at::where(saved[3].le(0).logical_or(saved[3].ge(6)), 0, grad);
    } else if (act != "none") {
      const c10::optional<Tensor> b = has_bias ? c10::optional<Tensor>(bias) : c10::nullopt;
      const Tensor z = ops.fwd.call(input, weight, b, stride, padding, dilation, groups, "none");
      if (at::GradMode::is_enabled()) {
        // create_graph: aten's silu_backward/gelu_backward have no derivative, so their
        // formulas run as differentiable ops (as in fastconv/_ops.py).
        if (act == "silu") {
          const Tensor s = at::sigmoid(z);
          grad = grad * (s * (1 + z * (1 - s)));
        } else {
          const Tensor cdf = 0.5 * (1 + at::erf(z * M_SQRT1_2));
          grad = grad * (cdf + z * (at::exp(-0.5 * z * z) * 0.3989422804014327));
        }
      } else {
        grad = act == "silu" ? at::silu_backward(grad, z) : at::gelu_backward(grad, z);
      }
    }

    // Edges are the tensor inputs in order: input, weight, then bias when given.
    // Sizes come from the saved tensors as SymInts: under torch.compile's dynamic
    // shapes they are symbolic, so the gradient ops are called boxed.
    variable_list out(8);
    if (ctx->needs_input_grad(0)) {
      out[0] = call_grad(ops.grad_input, grad, weight, input.sym_sizes(), stride, padding,
                         dilation, groups);
    }
    if (ctx->needs_input_grad(1)) {
      out[1] = call_grad(ops.grad_weight, grad, input, weight.sym_sizes(), stride, padding,
                         dilation, groups);
    }
    if (has_bias && ctx->needs_input_grad(2)) {
      out[2] = grad.sum({0, 2, 3});
    }
    return out;
  }
};

bool any_requires_grad(const Tensor& input, const Tensor& weight,
                       const c10::optional<Tensor>& bias) {
  return input.requires_grad() || weight.requires_grad() ||
         (bias.has_value() && bias->defined() && bias->requires_grad());
}

template <const char* Family>
Tensor conv2d_autograd(const Tensor& input, const Tensor& weight,
                       const c10::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                       IntArrayRef dilation, int64_t groups, c10::string_view activation) {
  if (!at::GradMode::is_enabled() || !any_requires_grad(input, weight, bias)) {
    // Nothing to record: go straight to the kernel below autograd.
    at::AutoDispatchBelowADInplaceOrView guard;
    return family_ops<Family>().fwd.call(input, weight, bias, stride, padding, dilation, groups,
                                         activation);
  }
  return ConvFunction<Family>::apply(input, weight, bias, stride, padding, dilation, groups,
                                     activation);
}

constexpr char kReference[] = "reference";
constexpr char kIm2col[] = "im2col";
constexpr char kDirect[] = "direct";
constexpr char kDepthwise[] = "depthwise";

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, Autograd, m) {
  m.impl("reference_conv2d", &fastconv::conv2d_autograd<fastconv::kReference>);
  m.impl("im2col_conv2d", &fastconv::conv2d_autograd<fastconv::kIm2col>);
  m.impl("direct_conv2d", &fastconv::conv2d_autograd<fastconv::kDirect>);
  m.impl("depthwise_conv2d", &fastconv::conv2d_autograd<fastconv::kDepthwise>);
}
