"""torch.library glue shared by every algorithm family's three ops.

For a family `<op>` (ops <op>_conv2d, <op>_conv2d_grad_input, <op>_conv2d_grad_weight)
this registers the fake (meta) kernels, autograd, and FLOP formulas, so that
torch.compile, torch.library.opcheck and FlopCounterMode all see fastconv ops.
"""
from __future__ import annotations

import functools

import torch
from torch.autograd import forward_ad
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
        # nn.ReLU6 is hardtanh(0, 6): its gradient is 0 at both ends (clamp's is 1).
        return torch.nn.functional.relu6(x)
    if activation == "silu":
        return torch.nn.functional.silu(x)
    if activation == "gelu":
        return torch.nn.functional.gelu(x)
    raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")


def smooth_activation_grad(grad, z, activation: str):
    """grad * act'(z) for SiLU/GELU. aten's silu_backward/gelu_backward have neither a
    derivative nor a forward-mode formula, so where one may be needed (grad mode on in a
    backward: create_graph; forward AD; torch.func) aten's formulas run as plain ops."""
    if (not torch.is_grad_enabled() and forward_ad._current_level < 0
            and not torch._C._are_functorch_transforms_active()):
        if activation == "silu":
            return torch.ops.aten.silu_backward(grad, z)
        return torch.ops.aten.gelu_backward(grad, z)
    if activation == "silu":  # aten's formula: s * (1 + z * (1 - s))
        s = torch.sigmoid(z)
        return grad * (s * (1 + z * (1 - s)))
    cdf = 0.5 * (1 + torch.erf(z * 0.7071067811865476))  # aten's: cdf + z * pdf
    pdf = torch.exp(-0.5 * z * z) * 0.3989422804014327
    return grad * (cdf + z * pdf)


def relu_grad(grad, out, activation: str):
    """torch's threshold_backward / hardtanh_backward from the fused output: a NaN output
    passes the gradient through, and a NaN or Inf gradient never meets a multiply by 0."""
    if activation == "relu":
        return torch.where(out <= 0, 0.0, grad)
    return torch.where((out <= 0) | (out >= 6), 0.0, grad)


def activation_grad(grad, activation: str, out, preactivation):
    """grad through the fused activation: ReLU and ReLU6 from the output `out`; SiLU and
    GELU need the pre-activation, which preactivation() recomputes (the same kernel, no
    activation)."""
    if activation == "none":
        return grad
    if activation in ("relu", "relu6"):
        return relu_grad(grad, out, activation)
    return smooth_activation_grad(grad, preactivation(), activation)


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

    # Double backward: the grad ops are linear in both tensors, and each of their
    # derivatives is again one of the family's three ops (see _grad_input_backward).
    for suffix, bw in (("_grad_input", _grad_input_backward), ("_grad_weight", _grad_weight_backward)):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(qual + suffix, "Autograd"):
            torch.library.register_autograd(qual + suffix, functools.partial(bw, fwd, gin, gw),
                                            setup_context=_grad_setup_context)

    torch.library.register_vmap(qual, functools.partial(_vmap_forward, fwd))
    torch.library.register_vmap(qual + "_grad_input", functools.partial(_vmap_grad_input, gin))
    torch.library.register_vmap(qual + "_grad_weight", functools.partial(_vmap_grad_weight, gw))

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


# --- Double backward ---------------------------------------------------------------------
# grad_input(g, w) is the transposed conv of g by w, and grad_weight(g, x) the correlation
# of g with x; both are bilinear, and by <conv(x, w), g> = <x, grad_input(g, w)> =
# <w, grad_weight(g, x)> each derivative is one of the same family's three ops.

def _grad_setup_context(ctx, inputs, output):
    grad_output, other, size, stride, padding, dilation, groups = inputs
    ctx.geom = (list(size), stride, padding, dilation, groups)
    ctx.save_for_backward(grad_output, other)


def _grad_input_backward(fwd, gin, gw, ctx, grad):
    """grad_input(g, w) -> input_size: d/dg = conv(grad, w), d/dw = grad_weight(g, grad)."""
    g, weight = ctx.saved_tensors
    _, stride, padding, dilation, groups = ctx.geom
    d_g = (fwd(grad, weight, None, stride, padding, dilation, groups, "none")
           if ctx.needs_input_grad[0] else None)
    d_w = (gw(g, grad, list(weight.shape), stride, padding, dilation, groups)
           if ctx.needs_input_grad[1] else None)
    return d_g, d_w, None, None, None, None, None


def _grad_weight_backward(fwd, gin, gw, ctx, grad):
    """grad_weight(g, x) -> weight_size: d/dg = conv(x, grad), d/dx = grad_input(g, grad)."""
    g, input = ctx.saved_tensors
    _, stride, padding, dilation, groups = ctx.geom
    d_g = (fwd(input, grad, None, stride, padding, dilation, groups, "none")
           if ctx.needs_input_grad[0] else None)
    d_x = (gin(g, grad, list(input.shape), stride, padding, dilation, groups)
           if ctx.needs_input_grad[1] else None)
    return d_g, d_x, None, None, None, None, None


# --- vmap ------------------------------------------------------------------------------
# A vmapped batch of B convolutions is one convolution: a batched input alone folds into N;
# a batched weight (or bias, or a grad_weight) makes B times the groups, the B copies side
# by side in the channel dimension.

def _fold_batch(t, bdim):
    """(..B at bdim.., N, ...) -> (B*N, ...)."""
    t = t.movedim(bdim, 0)
    return t.reshape(-1, *t.shape[2:])


def _channels(t, bdim, batch):
    """An (N, C, H, W) operand as (N, B*C, H, W), copy b in channels [b*C, (b+1)*C)."""
    if bdim is None:
        return t.repeat(1, batch, 1, 1)
    t = t.movedim(bdim, 1)
    return t.reshape(t.shape[0], -1, *t.shape[3:])


def _stacked(t, bdim, batch):
    """A weight (K, ...) or bias (K,) as (B*K, ...), copy b in rows [b*K, (b+1)*K)."""
    if bdim is None:
        return t.repeat(batch, *([1] * (t.dim() - 1)))
    return _fold_batch(t, bdim)


def _unfold_channels(out, batch):
    return out.reshape(out.shape[0], batch, -1, *out.shape[2:]), 1


def _vmap_forward(fwd, info, in_dims, input, weight, bias, stride, padding, dilation, groups,
                  activation="none"):
    xd, wd, bd = in_dims[:3]
    batch = info.batch_size
    if wd is None and bd is None:
        out = fwd(_fold_batch(input, xd), weight, bias, stride, padding, dilation, groups,
                  activation)
        return out.reshape(batch, -1, *out.shape[1:]), 0
    b = None if bias is None else _stacked(bias, bd, batch)
    out = fwd(_channels(input, xd, batch), _stacked(weight, wd, batch), b, stride, padding,
              dilation, groups * batch, activation)
    return _unfold_channels(out, batch)


def _vmap_grad_input(gin, info, in_dims, grad_output, weight, input_size, stride, padding,
                     dilation, groups):
    gd, wd = in_dims[:2]
    batch = info.batch_size
    n, c, h, w = input_size
    if wd is None:
        out = gin(_fold_batch(grad_output, gd), weight, [batch * n, c, h, w], stride, padding,
                  dilation, groups)
        return out.reshape(batch, n, *out.shape[1:]), 0
    out = gin(_channels(grad_output, gd, batch), _stacked(weight, wd, batch),
              [n, batch * c, h, w], stride, padding, dilation, groups * batch)
    return _unfold_channels(out, batch)


def _vmap_grad_weight(gw, info, in_dims, grad_output, input, weight_size, stride, padding,
                      dilation, groups):
    gd, xd = in_dims[:2]
    batch = info.batch_size
    k = weight_size[0]
    # grad_weight sums over N: the copies can only go side by side as groups.
    out = gw(_channels(grad_output, gd, batch), _channels(input, xd, batch),
             [batch * k, *weight_size[1:]], stride, padding, dilation, groups * batch)
    return out.reshape(batch, k, *out.shape[1:]), 0


# --- Forward-mode AD and torch.func ----------------------------------------------------------
def activation_jvp(tangent, activation, out, z_fn):
    """The tangent of act(z) from z's tangent, with torch's own formulas: relu/hardtanh pass
    the tangent where their backward passes the gradient; SiLU/GELU need z (z_fn())."""
    if activation == "none":
        return tangent
    if activation in ("relu", "relu6"):
        return relu_grad(tangent, out, activation)
    return smooth_activation_grad(tangent, z_fn(), activation)


class _Meta:
    """A Function's non-tensor arguments as one opaque object: torch.func flattens
    arguments as pytrees, and its generated vmap rule expects one gradient per leaf."""
    __slots__ = ("ops", "size", "stride", "padding", "dilation", "groups", "activation")

    def __init__(self, ops, size, stride, padding, dilation, groups, activation="none"):
        self.ops, self.size, self.stride, self.padding = ops, size, stride, padding
        self.dilation, self.groups, self.activation = dilation, groups, activation


class TransformConv2d(torch.autograd.Function):
    """A family's forward op as an autograd.Function with a jvp rule: fastconv.conv2d's path
    under forward-mode AD and torch.func transforms (jvp, jacfwd, grad, vmap, hessian, ...).

    Custom ops get no forward-mode formula from torch.library, and the CPU families' C++
    autograd kernel has no functorch support; this Function has both. Its backward runs
    the grad ops through _GradInput/_GradWeight, Functions with jvp rules too, so forward-
    over-reverse (torch.func.hessian) works. Under vmap the rules are generated from the
    ops' own vmap rules (register_vmap above)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, m):
        return m.ops[0](input, weight, bias, m.stride, m.padding, m.dilation, m.groups,
                        m.activation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, m = inputs
        ctx.ops = m.ops
        save_for_backward(ctx, input, weight, bias, m.stride, m.padding, m.dilation, m.groups,
                          m.activation, output)
        ctx.save_for_forward(input, weight, bias, output)

    @staticmethod
    def backward(ctx, grad):
        g_in, g_w, g_b = conv_backward(ctx, grad, *_transform_ops(ctx.ops))
        return g_in, g_w, g_b, None

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, _):
        input, weight, bias, out = ctx.saved_tensors
        fwd = ctx.ops[0]
        geom = (ctx.stride, ctx.padding, ctx.dilation, ctx.groups)
        # z = conv(x, w) + b is bilinear: z' = conv(x', w) + conv(x, w') + b'.
        parts = []
        if input_t is not None:
            parts.append(fwd(input_t, weight, None, *geom, "none"))
        if weight_t is not None:
            parts.append(fwd(input, weight_t, None, *geom, "none"))
        if bias_t is not None:
            parts.append(bias_t.reshape(1, -1, 1, 1).expand(out.shape))
        if not parts:
            return torch.zeros_like(out)
        tangent = functools.reduce(torch.add, parts)
        return activation_jvp(tangent, ctx.activation, out,
                              lambda: fwd(input, weight, bias, *geom, "none"))


def transform_conv2d(ops, x, w, b, stride, padding, dilation, groups, activation="none"):
    return TransformConv2d.apply(x, w, b, _Meta(ops, None, stride, padding, dilation, groups,
                                                activation))


def _transform_ops(ops):
    """The three ops as callables with the ops' signatures, through the Functions here."""
    def fwd(x, w, b, stride, padding, dilation, groups, activation="none"):
        return transform_conv2d(ops, x, w, b, stride, padding, dilation, groups, activation)

    def gin(g, w, size, stride, padding, dilation, groups):
        return _GradInput.apply(g, w, _Meta(ops, list(size), stride, padding, dilation, groups))

    def gw(g, x, size, stride, padding, dilation, groups):
        return _GradWeight.apply(g, x, _Meta(ops, list(size), stride, padding, dilation, groups))

    return fwd, gin, gw


class _GradOp(torch.autograd.Function):
    """A grad op (bilinear in its two tensors) with backward and jvp rules."""

    generate_vmap_rule = True
    INDEX = 0  # the op's index in ops
    BACKWARD = None  # _grad_input_backward or _grad_weight_backward

    @classmethod
    def forward(cls, g, other, m):
        return m.ops[cls.INDEX](g, other, m.size, m.stride, m.padding, m.dilation, m.groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, other, m = inputs
        ctx.ops = m.ops
        ctx.geom = (m.size, m.stride, m.padding, m.dilation, m.groups)
        ctx.save_for_backward(g, other)
        ctx.save_for_forward(g, other)

    @classmethod
    def backward(cls, ctx, grad):
        return (*cls.BACKWARD(*_transform_ops(ctx.ops), ctx, grad)[:2], None)

    @classmethod
    def jvp(cls, ctx, g_t, other_t, _):
        g, other = ctx.saved_tensors
        op = ctx.ops[cls.INDEX]
        parts = []
        if g_t is not None:
            parts.append(op(g_t, other, *ctx.geom))
        if other_t is not None:
            parts.append(op(g, other_t, *ctx.geom))
        if not parts:
            return g.new_zeros(ctx.geom[0])
        return functools.reduce(torch.add, parts)


class _GradInput(_GradOp):
    INDEX = 1
    BACKWARD = staticmethod(_grad_input_backward)


class _GradWeight(_GradOp):
    INDEX = 2
    BACKWARD = staticmethod(_grad_weight_backward)
