"""The eager fast path (fastconv/_eager.py): taken where nothing can tell the difference,
not taken where something must see the registered ops (FlopCounterMode, dispatch and
function modes, fake tensors, subclasses, torch.compile, the JIT tracer, the profiler,
forward AD, functorch), and always the ops' own results and gradients.

The machinery is exercised on the CPU through a test algorithm whose eager kernels are
Python wrappers (counting their calls) around the C++ im2col ops; tests/test_triton.py
runs the Triton families' real eager kernels under the interpreter."""
from __future__ import annotations

import collections
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import fastconv
from fastconv import _eager, functional, registry

NAME = "_eager_test"
ACTIVATIONS = ("none", "relu", "relu6", "silu", "gelu")
calls: collections.Counter = collections.Counter()


def _counting(name, fn):
    def kernel(*args):
        calls[name] += 1
        return fn(*args)
    return kernel


@pytest.fixture(autouse=True)
def eager_algo():
    ops = torch.ops.fastconv
    kernels = (_counting("fwd", ops.im2col_conv2d), _counting("gin", ops.im2col_conv2d_grad_input),
               _counting("gw", ops.im2col_conv2d_grad_weight))
    registry.register(registry.Algorithm(
        name=NAME, op="im2col", devices=("cpu",), dtypes=(torch.float32, torch.float64),
        summary="im2col with counting eager kernels", constraints="any conv2d", public=False,
        eager_kernels=lambda device: kernels if device == "cpu" else None))
    functional.clear_cache()
    calls.clear()
    yield
    registry.unregister(NAME)
    functional.clear_cache()
    _eager.ENABLED = True


def _data(requires_grad=False, bias=True):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64) * 3
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64) if bias else None
    for t in (x, w, b):
        if t is not None:
            t.requires_grad_(requires_grad)
    return x, w, b


def _conv(x, w, b, activation=None, **kw):
    return fastconv.conv2d(x, w, b, stride=(2, 1), padding=1, algo=NAME, activation=activation,
                           **kw)


def _ref(x, w, b, activation=None):
    return fastconv._ops.apply_activation(F.conv2d(x, w, b, stride=(2, 1), padding=1),
                                          activation or "none")


def test_taken_without_grad():
    x, w, b = _data()
    for _ in range(2):
        torch.testing.assert_close(_conv(x, w, b), _ref(x, w, b))
    torch.testing.assert_close(_conv(x[0], w, b), _ref(x[0], w, b))  # unbatched
    assert calls["fwd"] == 3
    with torch.no_grad():
        xr = x.clone().requires_grad_()
        out = _conv(xr, w, b)
    assert calls["fwd"] == 4 and out.grad_fn is None


@pytest.fixture(params=[False, True], ids=["3 kernels", "declining C++ autograd"])
def train_kernel(request):
    """With a fourth eager kernel, the C++ training call (Triton on CUDA); one that declines
    (returns None) leaves the call to Conv2dFunction, which must ignore it."""
    if not request.param:
        yield False
        return
    alg = registry.get(NAME)
    three = alg.eager_kernels("cpu")

    def train(*args):
        calls["train"] += 1
    registry.unregister(NAME)
    registry.register(dataclasses.replace(alg, eager_kernels=lambda device: (*three, train)))
    functional.clear_cache()
    yield True


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_grads_equal_fconv(activation, train_kernel):
    x, w, b = _data(requires_grad=True)
    out = _conv(x, w, b, activation)
    assert type(out.grad_fn).__name__ == "Conv2dFunctionBackward"
    gy = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, b), gy)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    ref_out = _ref(xr, wr, br, activation)
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, torch.autograd.grad(ref_out, (xr, wr, br), gy)):
        torch.testing.assert_close(g, r)
    # SiLU/GELU recompute the pre-activation through the same (eager) forward kernel.
    assert calls["fwd"] == (2 if activation in ("silu", "gelu") else 1)
    assert calls["gin"] == calls["gw"] == 1
    assert calls["train"] == (1 if train_kernel and activation == "none" else 0)


def test_only_the_needed_gradients_are_computed():
    x, w, b = _data()
    wr = w.clone().requires_grad_()
    (gw,) = torch.autograd.grad(_conv(x, wr, b).sum(), wr)
    assert calls["gin"] == 0 and calls["gw"] == 1
    wr2 = w.clone().requires_grad_()
    torch.testing.assert_close(gw, torch.autograd.grad(_ref(x, wr2, b).sum(), wr2)[0])
    xr = x[0].clone().requires_grad_()  # unbatched, input gradient only
    (gx,) = torch.autograd.grad(_conv(xr, w, None).sum(), xr)
    xr2 = x[0].clone().requires_grad_()
    torch.testing.assert_close(gx, torch.autograd.grad(_ref(xr2, w, None).sum(), xr2)[0])
    assert calls["gin"] == 1 and calls["gw"] == 1


def test_gradcheck_through_the_fast_path():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _conv(x, w, b, "silu"), (x, w, b))
    assert calls["fwd"] > 0 and calls["gin"] > 0


def test_inplace_change_after_forward_is_caught():
    x, w, b = _data(requires_grad=True)
    out = _conv(x, w, b)
    with torch.no_grad():
        w.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_not_taken_under_flop_counter():
    x, w, b = _data(requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        out = _conv(x, w, b)
        out.sum().backward()
    assert sum(calls.values()) == 0
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    assert "fastconv.im2col_conv2d" in counts
    assert "fastconv.im2col_conv2d_grad_input" in counts
    assert "fastconv.im2col_conv2d_grad_weight" in counts


def test_backward_under_a_mode_entered_after_forward_uses_the_ops():
    x, w, b = _data(requires_grad=True)
    out = _conv(x, w, b, "relu")
    assert calls["fwd"] == 1
    with FlopCounterMode(display=False) as fc:
        out.sum().backward()
    assert calls["gin"] == calls["gw"] == 0
    assert fc.get_total_flops() > 0
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    _ref(xr, wr, br, "relu").sum().backward()
    torch.testing.assert_close(w.grad, wr.grad)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class _FunctionRecorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen += 1
        return func(*args, **(kwargs or {}))


def test_not_taken_under_dispatch_or_function_modes():
    x, w, b = _data()
    with _Recorder() as mode:
        torch.testing.assert_close(_conv(x, w, b), _ref(x, w, b))
    assert any("fastconv.im2col_conv2d" in s for s in mode.seen)
    with _FunctionRecorder() as fmode:
        torch.testing.assert_close(_conv(x, w, b), _ref(x, w, b))
    assert fmode.seen > 0
    assert sum(calls.values()) == 0
    _conv(x, w, b)
    assert calls["fwd"] == 1  # and taken again once the modes are gone


def test_not_taken_for_fake_tensors_or_subclasses():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        x, w, b = (mode.from_tensor(t) for t in _data())
        out = _conv(x, w, b)
    assert out.shape == (2, 4, 4, 6)

    class Tagged(torch.Tensor):
        pass

    x, w, b = _data()
    out = _conv(x.as_subclass(Tagged), w, b)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), _ref(x, w, b))
    assert sum(calls.values()) == 0


def test_parameters_take_it():
    x, w, b = _data()
    wp, bp = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())
    out = _conv(x, wp, bp)
    out.sum().backward()
    assert calls["fwd"] == calls["gw"] == 1 and calls["gin"] == 0
    wr = w.clone().requires_grad_()
    _ref(x, wr, b).sum().backward()
    torch.testing.assert_close(wp.grad, wr.grad)


def test_not_taken_under_torch_compile():
    x, w, b = _data()
    compiled = torch.compile(lambda x: _conv(x, w, b, "relu"), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), _ref(x, w, b, "relu"))
    assert sum(calls.values()) == 0


def test_not_taken_under_jit_trace_or_profiler():
    x, w, b = _data()
    traced = torch.jit.trace(lambda x: _conv(x, w, b), (x,), check_trace=False)
    assert "fastconv::im2col_conv2d" in str(traced.graph)
    torch.testing.assert_close(traced(x), _ref(x, w, b))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _conv(x, w, b)
    assert any(e.key == "fastconv::im2col_conv2d" for e in prof.key_averages())
    assert sum(calls.values()) == 0


def test_not_taken_with_forward_ad_or_functorch():
    import torch.autograd.forward_ad as fwAD

    x, w, b = _data()
    with fwAD.dual_level():
        _conv(fwAD.make_dual(x, torch.randn_like(x)), w, b)
    assert sum(calls.values()) == 0
    # torch.func takes fastconv.conv2d's TransformConv2d path, through the ops.
    torch.func.grad(lambda w: _conv(x, w, b).sum())(w)
    assert sum(calls.values()) == 0


def test_not_taken_for_escaped_functorch_wrappers():
    """A tensor that escaped a torch.func transform is a torch.Tensor wrapping another one;
    the dispatcher unwraps it, so it must take the ops."""
    x, w, b = _data()
    escaped = []
    torch.func.grad(lambda t: (escaped.append(t * 1.0), (t * t).sum())[1])(x)
    assert type(escaped[0]) is torch.Tensor
    assert not _eager.plain(escaped[0], w, b) and _eager.plain(x, w, b)
    try:
        out = _conv(escaped[0], w, b)
    except RuntimeError:
        out = None  # what the ops do with it is theirs to decide; only the path matters
    assert sum(calls.values()) == 0
    if out is not None:
        torch.testing.assert_close(out, _ref(x, w, b))


def test_double_backward_goes_through_the_ops():
    """create_graph=True: the backward runs the registered ops, as without the fast path."""
    def second_order():
        x, w, b = _data()
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(_conv(xr, w, b, "silu").sum(), xr, create_graph=True)
        return g
    g = second_order()
    assert calls["gin"] == 0
    _eager.ENABLED = False
    torch.manual_seed(0)
    torch.testing.assert_close(g.requires_grad, second_order().requires_grad)


def test_autocast_takes_the_ops_and_their_rule():
    """Under autocast the op's autocast kernel must cast the result (fastconv/_autocast.py):
    the fast path, which skips the dispatcher, is not taken, and the result is F.conv2d's
    dtype with the switch on or off."""
    x, w, b = (t.float() for t in _data())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _conv(x, w, b)
        want = F.conv2d(x, w, b, stride=(2, 1), padding=1)
    assert calls["fwd"] == 0 and out.dtype == want.dtype == torch.bfloat16
    _eager.ENABLED = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(out, _conv(x, w, b))


def test_switch_off_uses_the_ops():
    _eager.ENABLED = False
    x, w, b = _data(requires_grad=True)
    out = _conv(x, w, b)
    out.sum().backward()
    assert sum(calls.values()) == 0 and type(out.grad_fn).__name__ != "Conv2dFunctionBackward"


# --- fastconv.nn.Conv2d: the plan is cached, module changes replan ----------------------

def test_module_plans_once_per_geometry(monkeypatch):
    mod = fastconv.nn.Conv2d(3, 4, 3, padding=1, algo=NAME).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    selected = []
    real_select = functional.select
    monkeypatch.setattr(functional, "select", lambda *a: selected.append(a) or real_select(*a))
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(mod(x), F.conv2d(x, mod.weight, mod.bias, padding=1))
        assert len(selected) == 1 and calls["fwd"] == 3
        mod(x[:1])  # a new geometry plans again
        assert len(selected) == 2
        # Changing the module's attributes replans (the cache key holds them).
        mod.activation = "relu"
        torch.testing.assert_close(mod(x), F.relu(F.conv2d(x, mod.weight, mod.bias, padding=1)))
        mod.padding, mod.stride = (0, 0), (2, 2)
        torch.testing.assert_close(mod(x), F.relu(F.conv2d(x, mod.weight, mod.bias, stride=2)))
    mod.activation = None
    out = mod(x)  # training: the fast path's autograd
    out.sum().backward()
    assert calls["gw"] == 1 and mod.weight.grad is not None


def test_module_packed_path_still_cached():
    mod = fastconv.nn.Conv2d(3, 4, 3, padding=1, algo="direct").double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        out = mod(x)
        assert mod.packed_weight_cached
        mod.weight.add_(1.0)  # an optimizer-like in-place step invalidates the packed weight
        torch.testing.assert_close(mod(x), F.conv2d(x, mod.weight, mod.bias, padding=1))
    torch.testing.assert_close(out, F.conv2d(x, mod.weight - 1.0, mod.bias, padding=1))
