"""torch.library glue shared by every algorithm family's three ops.

For a family `<op>` (ops <op>_conv2d, <op>_conv2d_grad_input, <op>_conv2d_grad_weight)
this registers the fake (meta) kernels, autograd, and FLOP formulas, so that
torch.compile, torch.library.opcheck and FlopCounterMode all see fastconv ops.
"""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

ACTIVATIONS = ("none", "relu", "relu6", "silu", "gelu")


def output_size(input_size, weight_size, stride, padding, dilation):
    n, _, h, w = input_size
    k, _, r, s = weight_size
    ho = (h + padding[0] + padding[1] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    wo = (w + padding[2] + padding[3] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return [n, k, ho, wo]


def is_channels_last(t) -> bool:
    return t.dim() == 4 and suggest_memory_format(t) == torch.channels_last


def output_memory_format(input, weight):
    """PyTorch's rule (and the kernels'): channels_last if input or weight is."""
    if is_channels_last(input) or is_channels_last(weight):
        return torch.channels_last
    return torch.contiguous_format


def apply_activation(x, activation: str):
    if activation == "none":
        return x
    if activation == "relu":
        return torch.relu(x)
    if activation == "relu6":
        return torch.clamp(x, 0.0, 6.0)
    if activation == "silu":
        return torch.nn.functional.silu(x)
    if activation == "gelu":
        return torch.nn.functional.gelu(x)
    raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")


def activation_grad(grad, activation: str, out, preactivation):
    """grad through the fused activation: ReLU and ReLU6 from the output `out`; SiLU and
    GELU need the pre-activation, which preactivation() recomputes (the same kernel, no
    activation)."""
    if activation == "none":
        return grad
    if activation == "relu":
        return grad * (out > 0)
    if activation == "relu6":
        return grad * ((out > 0) & (out < 6))
    z = preactivation()
    if activation == "silu":
        return torch.ops.aten.silu_backward(grad, z)
    return torch.ops.aten.gelu_backward(grad, z)


def _activation_grad(grad, ctx, fwd):
    x, w, b, out = ctx.saved_tensors
    return activation_grad(grad, ctx.activation, out, lambda: fwd(
        x, w, b, ctx.stride, ctx.padding, ctx.dilation, ctx.groups, "none"))


def save_for_backward(ctx, input, weight, bias, stride, padding, dilation, groups, activation,
                      output) -> None:
    """What conv_backward reads from ctx (the ops' autograd and the eager path's alike)."""
    ctx.activation = activation
    ctx.has_bias = bias is not None
    ctx.stride, ctx.padding, ctx.dilation, ctx.groups = stride, padding, dilation, groups
    ctx.input_size = list(input.shape)
    ctx.weight_size = list(weight.shape)
    # ReLU and ReLU6 gradients follow from the output; SiLU/GELU recompute.
    out = output if activation in ("relu", "relu6") else None
    ctx.save_for_backward(input, weight, bias, out)


def conv_backward(ctx, grad, fwd, gin, gw):
    """(grad_input, grad_weight, grad_bias) of conv2d + fused activation, through the
    family's forward (to recompute SiLU/GELU's pre-activation) and gradient kernels."""
    input, weight = ctx.saved_tensors[:2]
    if ctx.activation != "none":
        grad = _activation_grad(grad, ctx, fwd)
    need_in, need_w, need_b = ctx.needs_input_grad[:3]
    g_in = gin(grad, weight, ctx.input_size, ctx.stride, ctx.padding, ctx.dilation,
               ctx.groups) if need_in else None
    g_w = gw(grad, input, ctx.weight_size, ctx.stride, ctx.padding, ctx.dilation,
             ctx.groups) if need_w else None
    g_b = grad.sum((0, 2, 3)) if (ctx.has_bias and need_b) else None
    return g_in, g_w, g_b


def register_family(op: str, *, fake: bool = True) -> None:
    """Register fake kernels (unless the op is a triton_op, which traces itself),
    autograd and FLOP formulas for the family `op`."""
    ns = torch.ops.fastconv
    fwd = getattr(ns, f"{op}_conv2d")
    gin = getattr(ns, f"{op}_conv2d_grad_input")
    gw = getattr(ns, f"{op}_conv2d_grad_weight")
    qual = f"fastconv::{op}_conv2d"

    if fake:
        @torch.library.register_fake(qual)
        def _fake_fwd(input, weight, bias, stride, padding, dilation, groups, activation="none"):
            size = output_size(input.shape, weight.shape, stride, padding, dilation)
            return input.new_empty(size).contiguous(memory_format=output_memory_format(input, weight))

        @torch.library.register_fake(qual + "_grad_input")
        def _fake_gin(grad_output, weight, input_size, stride, padding, dilation, groups):
            return grad_output.new_empty(input_size).contiguous(
                memory_format=output_memory_format(grad_output, grad_output))

        @torch.library.register_fake(qual + "_grad_weight")
        def _fake_gw(grad_output, input, weight_size, stride, padding, dilation, groups):
            return input.new_empty(weight_size)

    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups, *rest = inputs
        save_for_backward(ctx, input, weight, bias, stride, padding, dilation, groups,
                          rest[0] if rest else "none", output)

    def backward(ctx, grad):
        return (*conv_backward(ctx, grad, fwd, gin, gw), None, None, None, None, None)

    # The CPU families register this same autograd in C++ (csrc/autograd.cpp): the
    # Python kernel costs tens of microseconds a call even when no gradient is needed.
    if not torch._C._dispatch_has_kernel_for_dispatch_key(qual, "Autograd"):
        torch.library.register_autograd(qual, backward, setup_context=setup_context)

    @register_flop_formula(fwd)
    def _flops_fwd(input_shape, weight_shape, *args, out_shape=None, **kwargs):
        return conv_flop_count(input_shape, weight_shape, out_shape, transposed=False)

    @register_flop_formula(gin)
    def _flops_gin(grad_shape, weight_shape, *args, out_shape=None, **kwargs):
        # Same MACs as the forward: a transposed convolution of grad_output.
        return conv_flop_count(out_shape, weight_shape, grad_shape, transposed=False)

    @register_flop_formula(gw)
    def _flops_gw(grad_shape, input_shape, *args, out_shape=None, **kwargs):
        return conv_flop_count(input_shape, out_shape, grad_shape, transposed=False)
