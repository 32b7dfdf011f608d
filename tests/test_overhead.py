"""The per-call fast paths: the validation cache in fastconv.conv2d/conv_spec and the
C++ autograd kernel of the CPU families. Correctness only (no timing thresholds):
a cached entry is never reused for a call that differs in anything validation reads,
and bad input after a good call raises exactly what it raises on a cold cache."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import functional, registry

CPU_FAMILIES = ("reference", "im2col", "direct", "depthwise")


@pytest.fixture(autouse=True)
def cold_cache():
    functional.clear_cache()
    yield
    functional.clear_cache()


def _error(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


def _x(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


# (description, good kwargs, bad kwargs): the bad call differs from a cached good one
# in a single argument.
BAD_AFTER_GOOD = [
    ("stride bool", dict(stride=1), dict(stride=True)),
    ("stride tuple of bool", dict(stride=(1, 1)), dict(stride=(True, 1))),
    ("stride zero", dict(stride=1), dict(stride=0)),
    ("stride three", dict(stride=(1, 1)), dict(stride=(1, 1, 1))),
    ("padding negative", dict(padding=1), dict(padding=-1)),
    ("padding same strided", dict(padding="same"), dict(padding="same", stride=2)),
    ("padding bad string", dict(padding="same"), dict(padding="full")),
    ("padding float", dict(padding=1), dict(padding=1.0)),
    ("dilation zero", dict(dilation=1), dict(dilation=0)),
    ("dilation too large", dict(dilation=2), dict(dilation=9)),
    ("groups bool", dict(groups=1), dict(groups=True)),
    ("groups not dividing", dict(groups=1), dict(groups=3)),
    ("algo unknown", dict(algo="im2col"), dict(algo="nope")),
    ("algo not a string", dict(algo="im2col"), dict(algo=None)),
    ("algo not applicable", dict(algo="im2col"), dict(algo="depthwise")),
    ("activation unknown", dict(activation="relu"), dict(activation="tanh")),
]


@pytest.mark.parametrize("desc,good,bad", BAD_AFTER_GOOD, ids=[c[0] for c in BAD_AFTER_GOOD])
def test_bad_call_after_good_raises_as_cold(desc, good, bad):
    x, w = _x(1, 4, 6, 6), _x(4, 4, 3, 3)
    cold = _error(lambda: fastconv.conv2d(x, w, **bad))
    fastconv.conv2d(x, w, **good)
    fastconv.conv2d(x, w, **good)  # served from the cache
    assert _error(lambda: fastconv.conv2d(x, w, **bad)) == cold
    # And nothing bad was stored: a second bad call raises too.
    assert _error(lambda: fastconv.conv2d(x, w, **bad)) == cold


@pytest.mark.parametrize("what", ["input dtype", "weight dtype", "bias dtype", "bias shape",
                                  "bias not a tensor", "input channels", "weight 3-D",
                                  "input 5-D", "unsupported dtype", "weight device"])
def test_bad_tensors_after_good_raise_as_cold(what):
    x, w, b = _x(2, 4, 5, 5), _x(6, 4, 3, 3), _x(6)
    bad = {
        "input dtype": lambda: (x.float(), w, b),
        "weight dtype": lambda: (x, w.float(), b),
        "bias dtype": lambda: (x, w, b.float()),
        "bias shape": lambda: (x, w, _x(5)),
        "bias not a tensor": lambda: (x, w, [0.0] * 6),
        "input channels": lambda: (_x(2, 3, 5, 5), w, b),
        "weight 3-D": lambda: (x, w[0], b),
        "input 5-D": lambda: (x[None], w, b),
        "unsupported dtype": lambda: (x.half(), w.half(), b.half()),
        "weight device": lambda: (x, w.to("meta"), b),
    }[what]
    cold = _error(lambda: fastconv.conv2d(*bad()))
    for _ in range(2):
        fastconv.conv2d(x, w, b)
    assert _error(lambda: fastconv.conv2d(*bad())) == cold


def test_layout_change_is_not_served_stale():
    x, w = _x(2, 8, 6, 6), _x(8, 8, 3, 3)
    for _ in range(2):
        _, _, spec = fastconv.conv_spec(x, w)
        assert spec.layout == "nchw"
    xc = x.contiguous(memory_format=torch.channels_last)
    _, _, spec = fastconv.conv_spec(xc, w)
    assert spec.layout == "nhwc"
    out = fastconv.conv2d(xc, w, padding=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1))
    # A non-contiguous view of the same shape.
    xt = _x(2, 8, 6, 6).transpose(2, 3)
    torch.testing.assert_close(fastconv.conv2d(xt, w, padding=1), F.conv2d(xt, w, padding=1))


def test_dtype_and_device_changes():
    x, w = _x(1, 3, 5, 5), _x(4, 3, 3, 3)
    assert fastconv.conv2d(x, w).dtype == torch.float64
    out = fastconv.conv2d(x.float(), w.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.conv2d(x.float(), w.float()))
    _, _, spec = fastconv.conv_spec(x, w)
    assert spec.device == "cpu" and spec.dtype == torch.float64
    _, _, spec = fastconv.conv_spec(x.to("meta"), w.to("meta"))
    assert spec.device == "meta"


@pytest.mark.parametrize("kwargs", [
    dict(padding=1), dict(padding=(1, 2)), dict(padding="same"), dict(padding="valid"),
    dict(stride=2), dict(stride=(2, 1)), dict(dilation=2), dict(groups=2),
    dict(padding=[1, 0], stride=[1, 2], dilation=[1]),
])
def test_argument_changes_give_fresh_results(kwargs):
    x, w = _x(2, 4, 9, 9), _x(6, 4, 3, 3)
    wg = _x(6, 2, 3, 3)
    fastconv.conv2d(x, w)  # cache the default geometry first
    weight = wg if kwargs.get("groups", 1) == 2 else w
    for _ in range(2):
        out = fastconv.conv2d(x, weight, **kwargs)
        torch.testing.assert_close(out, F.conv2d(x, weight, **kwargs))


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "silu", "gelu"])
def test_activation_and_algo_changes(activation):
    x, w, b = _x(1, 4, 6, 6) * 4, _x(4, 1, 3, 3), _x(4)
    ref = fastconv._ops.apply_activation(F.conv2d(x, w, b, groups=4), activation or "none")
    for algo in ("auto", "im2col", "depthwise", "direct", "im2col"):
        for _ in range(2):
            out = fastconv.conv2d(x, w, b, groups=4, algo=algo, activation=activation)
            torch.testing.assert_close(out, ref)
    # Same geometry without bias, and unbatched.
    torch.testing.assert_close(fastconv.conv2d(x, w, groups=4), F.conv2d(x, w, groups=4))
    torch.testing.assert_close(fastconv.conv2d(x[0], w, b, groups=4), F.conv2d(x[0], w, b, groups=4))


def test_registry_changes_invalidate_entries():
    x, w = _x(1, 2, 4, 4), _x(2, 2, 1, 1)
    name = "_test_overhead_algo"
    registry.register(registry.Algorithm(name=name, op="reference", devices=("cpu",),
                                         dtypes=(torch.float64,), summary="test", public=False,
                                         constraints="any"))
    try:
        for _ in range(2):
            torch.testing.assert_close(fastconv.conv2d(x, w, algo=name), F.conv2d(x, w))
    finally:
        registry.unregister(name)
    assert _error(lambda: fastconv.conv2d(x, w, algo=name))[0] is fastconv.ConvValueError


def test_triton_interpret_state_is_part_of_the_key(monkeypatch):
    x, w = _x(1, 2, 4, 4).half(), _x(2, 2, 1, 1).half()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    fastconv.conv_spec(x, w)
    fastconv.conv_spec(x, w)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(TypeError, match="not supported on cpu"):
        fastconv.conv_spec(x, w)


def test_cache_is_bounded():
    w = torch.empty(1, 1, 1, 1, device="meta")
    for h in range(functional._CACHE_SIZE + 50):
        fastconv.conv_spec(torch.empty(1, 1, h + 1, 1, device="meta"), w)
    assert len(functional._CACHE) <= functional._CACHE_SIZE


def test_conv_spec_and_conv2d_share_no_entries():
    # conv_spec's entries carry no algorithm: conv2d(algo=None) must still be rejected.
    x, w = _x(1, 2, 4, 4), _x(2, 2, 1, 1)
    fastconv.conv_spec(x, w)
    with pytest.raises(TypeError, match="algo must be a string"):
        fastconv.conv2d(x, w, algo=None)


# --- The C++ autograd kernel of the CPU families ------------------------------------------

@pytest.mark.parametrize("family", CPU_FAMILIES)
def test_cpu_families_have_cpp_autograd(family):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastconv::{family}_conv2d", "Autograd")


@pytest.mark.parametrize("family", ["im2col", "direct"])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "silu", "gelu"])
def test_autograd_graph_only_when_needed(family, activation):
    op = getattr(torch.ops.fastconv, f"{family}_conv2d")
    x, w, b = _x(2, 3, 6, 6), _x(4, 3, 3, 3), _x(4)
    args = ([1, 1], [1, 1, 1, 1], [1, 1], 1, activation)
    out = op(x, w, b, *args)
    assert not out.requires_grad and out.grad_fn is None
    wr = w.clone().requires_grad_()
    with torch.no_grad():
        assert op(x, wr, b, *args).grad_fn is None
    out = op(x, wr, b, *args)
    assert out.requires_grad
    gy = torch.randn_like(out)
    (gw,) = torch.autograd.grad(out, wr, gy)
    wr2 = w.clone().requires_grad_()
    ref = fastconv._ops.apply_activation(F.conv2d(x, wr2, b, padding=1), activation)
    (gw_ref,) = torch.autograd.grad(ref, wr2, gy)
    torch.testing.assert_close(gw, gw_ref)
    # Input and bias gradients only, weight frozen.
    xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
    gx, gb = torch.autograd.grad(op(xr, w, br, *args), (xr, br), gy)
    xr2, br2 = x.clone().requires_grad_(), b.clone().requires_grad_()
    ref = fastconv._ops.apply_activation(F.conv2d(xr2, w, br2, padding=1), activation)
    gx_ref, gb_ref = torch.autograd.grad(ref, (xr2, br2), gy)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gb, gb_ref)


def test_cpp_autograd_gradcheck_with_bias_and_activation():
    x = _x(1, 2, 5, 5).requires_grad_()
    w = _x(3, 2, 3, 3).requires_grad_()
    b = _x(3).requires_grad_()
    for act in ("silu", "relu6"):
        assert torch.autograd.gradcheck(
            lambda x, w, b: fastconv.conv2d(x, w, b, stride=2, padding=1, algo="im2col",
                                            activation=act), (x, w, b))
