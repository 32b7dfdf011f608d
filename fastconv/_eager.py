"""The eager fast path: fastconv.conv2d's kernels called without the dispatcher.

A registered op with a Python kernel costs ~15 us a call to dispatch, and torch.library's
Python autograd wrapper ~40 us more when an input requires grad; a small layer's GPU kernel
takes less. Where nothing can observe or reinterpret the call (`plain`), fastconv.conv2d
calls the algorithm's eager kernels (registry.Algorithm.eager_kernels: the same Python
functions the ops dispatch to) directly, and when a gradient is needed wraps them in one
autograd.Function whose backward is the ops' own (_ops.conv_backward, fused activations
included). Everything else takes the registered ops: torch.compile, tensor subclasses
(FakeTensor, DTensor, ...), TorchDispatchMode / TorchFunctionMode (FlopCounterMode, fake
and functional modes, `with torch.device(...)`), functorch transforms (vmap, grad,
functionalize), the JIT tracer, the autograd profiler (so traces name the ops), and
forward-mode AD. Under autocast fastconv.conv2d and the modules call the ops themselves
(fastconv/_autocast.py: the ops' autocast kernels cast the result), never this path.
"""
from __future__ import annotations

import torch
from torch.autograd import forward_ad

from . import _ops

_C = torch._C
_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_is_compiling = torch.compiler.is_compiling
_wrapped = _C._functorch.is_functorch_wrapped_tensor

# Module switch, for tests and benchmarks that compare with the dispatcher path.
ENABLED = True


def _no_observers() -> bool:
    """No mode, transform, tracer or profiler that must see the registered ops."""
    return (not _C._len_torch_dispatch_stack() and not _C._len_torch_function_stack()
            and not _C._are_functorch_transforms_active() and _C._get_tracing_state() is None
            and not _C._autograd._profiler_enabled() and forward_ad._current_level < 0
            and not _is_compiling())


def plain(input, weight, bias) -> bool:
    """True when calling the kernels directly is indistinguishable from calling the ops:
    exactly torch.Tensor / nn.Parameter arguments (no subclass with its own dispatch), none
    a functorch wrapper (one that escaped a transform is a torch.Tensor too)."""
    ti, tw = type(input), type(weight)
    return (ENABLED and (ti is _Tensor or ti is _Parameter) and (tw is _Tensor or tw is _Parameter)
            and (bias is None or ((type(bias) is _Tensor or type(bias) is _Parameter)
                                  and not _wrapped(bias)))
            and _no_observers() and not _wrapped(input) and not _wrapped(weight))


def conv2d(kernels, ops, x, weight, bias, stride, padding, dilation, groups, activation):
    """The op's result from `kernels` = (forward, grad_input, grad_weight[, C++ training
    call]); `ops` are the registered ops, which a double backward or a mode active during
    backward goes through."""
    if _C.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                 or (bias is not None and bias.requires_grad)):
        if len(kernels) > 3 and activation == "none":  # Triton on CUDA: autograd in C++
            out = kernels[3](x, weight, bias, stride, padding, dilation, groups, ops)
            if out is not None:
                return out
        return _apply(x, weight, bias, (kernels, ops, stride, padding, dilation, groups, activation))
    return kernels[0](x, weight, bias, stride, padding, dilation, groups, activation)


class Conv2dFunction(torch.autograd.Function):
    """The autograd the ops register (_ops.register_family), as one Function over the kernels.
    The non-tensor arguments travel as one tuple: fewer arguments for apply to process."""

    @staticmethod
    def forward(ctx, x, weight, bias, meta):
        kernels, ops, stride, padding, dilation, groups, activation = meta
        out = kernels[0](x, weight, bias, stride, padding, dilation, groups, activation)
        ctx.kernels, ctx.ops = kernels, ops
        _ops.save_for_backward(ctx, x, weight, bias, stride, padding, dilation, groups,
                               activation, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        # create_graph (grad mode on here), a subclass gradient or a mode entered since the
        # forward: the registered ops, exactly as the op's own autograd would call them.
        direct = (not _C.is_grad_enabled() and ENABLED
                  and (type(grad) is _Tensor) and _no_observers())
        kernels = ctx.kernels[:3] if direct else ctx.ops  # not the C++ autograd's 4th entry
        g_in, g_w, g_b = _ops.conv_backward(ctx, grad, *kernels)
        return g_in, g_w, g_b, None


def _c_apply():
    """autograd.Function.apply minus its Python prologue, which only matters when functorch
    transforms are active, for dead functorch wrappers (plain() excludes both) or with a
    setup_context (Conv2dFunction has none): the C++ apply it ends in, bound to the class.
    It is ~1/3 of a small layer's training-step host time. Falls back to the public apply."""
    fn = getattr(super(torch.autograd.Function, Conv2dFunction), "apply", None)
    if fn is None or Conv2dFunction.setup_context is not torch.autograd.Function.setup_context:
        return Conv2dFunction.apply
    return fn


_apply = _c_apply()
