"""fastconv.conv2d against what PyTorch's own convolution tests check (test/nn/
test_convolution.py and the conv2d OpInfo): second derivatives (gradgradcheck), forward-mode
AD and torch.func (jvp, jacfwd, hessian, vmap, per-sample grads), exception classes, empty
channels, meta tensors, NaN/Inf through fused activations and padding, int64 edges, and the
up-front size check. Every CPU algorithm (the reference included); the Triton algorithms'
counterparts run under the interpreter in tests/test_triton.py."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad as fwAD

import fastconv
from fastconv import _ops, registry

from helpers import cpu_algos

ALGOS = cpu_algos()

# name: input shape, weight shape, bias, conv arguments
GEOMETRIES = {
    "strided": ((2, 2, 5, 5), (4, 2, 3, 3), True, dict(stride=2, padding=1)),
    "grouped_dilated_nobias": ((1, 4, 7, 6), (4, 2, 2, 3), False,
                               dict(padding=(1, 2), dilation=2, groups=2)),
    "depthwise_multiplier": ((2, 3, 5, 5), (6, 1, 3, 3), True, dict(groups=3, padding=1)),
    "same_even_kernel": ((1, 3, 5, 4), (2, 3, 2, 2), True, dict(padding="same")),
}


def _applies(algo, shapes):
    xs, ws, bias, kw = shapes
    x, w = torch.empty(xs, device="meta"), torch.empty(ws, device="meta")
    _, _, spec = fastconv.conv_spec(x, w, None, **kw)
    return registry.get(algo).why_not(spec.with_(device="cpu")) is None


CASES = [(a, g) for a in ALGOS for g, shapes in GEOMETRIES.items() if _applies(a, shapes)]
CASE_IDS = [f"{a}-{g}" for a, g in CASES]


def _data(geometry, dtype=torch.float64, seed=0):
    xs, ws, bias, kw = GEOMETRIES[geometry]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(xs, generator=gen, dtype=dtype)
    w = torch.randn(ws, generator=gen, dtype=dtype)
    b = torch.randn(ws[0], generator=gen, dtype=dtype) if bias else None
    return x, w, b, kw


def _ref(x, w, b, kw, activation=None):
    return _ops.apply_activation(F.conv2d(x, w, b, **kw), activation or "none")


# --- Double backward ---------------------------------------------------------------------------
@pytest.mark.parametrize("activation", [None, "silu", "gelu", "relu"])
@pytest.mark.parametrize("algo,geometry", CASES, ids=CASE_IDS)
def test_gradgradcheck(algo, geometry, activation):
    x, w, b, kw = _data(geometry)
    leaves = tuple(t.requires_grad_() for t in (x, w, b) if t is not None)

    def f(*ts):
        return fastconv.conv2d(ts[0], ts[1], ts[2] if len(ts) > 2 else None, **kw, algo=algo,
                               activation=activation)
    assert torch.autograd.gradgradcheck(f, leaves, fast_mode=True)


@pytest.mark.parametrize("algo", [a for a in ALGOS if a != "depthwise"])
def test_gradient_penalty_of_the_issue(algo):
    """Issue 15's example: a penalty on the input gradient's norm trains the weight."""
    def w_grad(conv):
        torch.manual_seed(0)
        x = torch.randn(2, 2, 5, 5, dtype=torch.double, requires_grad=True)
        w = torch.randn(4, 2, 3, 3, dtype=torch.double, requires_grad=True)
        gx, = torch.autograd.grad(conv(x, w).sum(), x, create_graph=True)
        ((gx.flatten(1).norm(dim=1) - 1) ** 2).mean().backward()
        return w.grad
    got = w_grad(lambda x, w: fastconv.conv2d(x, w, None, 2, 1, algo=algo))
    want = w_grad(lambda x, w: F.conv2d(x, w, None, 2, 1))
    assert got is not None
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("algo", ALGOS)
def test_grad_ops_double_backward_directly(algo):
    """The grad ops' own autograd: gradgradcheck of torch.ops.fastconv.*_grad_input/_weight."""
    ops = torch.ops.fastconv
    geom = ([1, 1], [1, 1, 1, 1], [1, 1], 2)
    g = torch.randn(1, 4, 5, 5, dtype=torch.double, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, dtype=torch.double, requires_grad=True)
    x = torch.randn(1, 2, 5, 5, dtype=torch.double, requires_grad=True)
    if algo == "depthwise":
        pytest.skip("depthwise_* ops need groups == in_channels (covered by gradgradcheck above)")
    gin = getattr(ops, f"{algo}_conv2d_grad_input")
    gw = getattr(ops, f"{algo}_conv2d_grad_weight")
    assert torch.autograd.gradcheck(lambda g, w: gin(g, w, [1, 2, 5, 5], *geom), (g, w))
    assert torch.autograd.gradcheck(lambda g, x: gw(g, x, [4, 1, 3, 3], *geom), (g, x))
    assert torch.autograd.gradgradcheck(lambda g, w: gin(g, w, [1, 2, 5, 5], *geom), (g, w),
                                        fast_mode=True)


# --- Forward-mode AD and torch.func -------------------------------------------------------------
@pytest.mark.parametrize("activation", [None, "relu6", "silu"])
@pytest.mark.parametrize("algo,geometry", CASES, ids=CASE_IDS)
def test_forward_ad_tangent(algo, geometry, activation):
    x, w, b, kw = _data(geometry)
    tangents = [torch.randn_like(t) if t is not None else None for t in (x, w, b)]

    def tangent(conv):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(t, dt) if t is not None else None
                     for t, dt in zip((x, w, b), tangents)]
            out = fwAD.unpack_dual(conv(*duals))
            return out.primal, out.tangent
    got = tangent(lambda x, w, b: fastconv.conv2d(x, w, b, **kw, algo=algo, activation=activation))
    want = tangent(lambda x, w, b: _ref(x, w, b, kw, activation))
    assert got[1] is not None, "no tangent"
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("algo,geometry", CASES, ids=CASE_IDS)
def test_func_jvp_jacfwd_hessian(algo, geometry):
    x, w, b, kw = _data(geometry)
    ours = lambda x, w: fastconv.conv2d(x, w, b, **kw, algo=algo, activation="silu")  # noqa: E731
    ref = lambda x, w: _ref(x, w, b, kw, "silu")  # noqa: E731
    tx, tw = torch.randn_like(x), torch.randn_like(w)
    got = torch.func.jvp(ours, (x, w), (tx, tw))[1]
    want = torch.func.jvp(ref, (x, w), (tx, tw))[1]
    assert got.norm() > 0
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.func.jacfwd(lambda x: ours(x, w))(x),
                               torch.func.jacfwd(lambda x: ref(x, w))(x))
    # Forward over reverse: the backward's grad ops need jvp rules too.
    torch.testing.assert_close(torch.func.hessian(lambda w: ours(x, w).pow(2).sum())(w),
                               torch.func.hessian(lambda w: ref(x, w).pow(2).sum())(w))


@pytest.mark.parametrize("in_dims", [(0, None, None), (None, 0, None), (0, 0, 0), (1, None, 0)],
                         ids=["input", "weight", "all", "input_dim1_bias"])
@pytest.mark.parametrize("algo,geometry", CASES, ids=CASE_IDS)
def test_vmap(algo, geometry, in_dims):
    x, w, b, kw = _data(geometry)
    if b is None and in_dims[2] is not None:
        pytest.skip("no bias in this geometry")
    batch = 3

    def batched(t, d):
        if t is None or d is None:
            return t
        return torch.stack([t + i for i in range(batch)], dim=d)
    args = [batched(t, d) for t, d in zip((x, w, b), in_dims)]
    got = torch.func.vmap(lambda x, w, b: fastconv.conv2d(x, w, b, **kw, algo=algo, activation="relu"),
                          in_dims=in_dims)(*args)
    want = torch.stack([_ref(*[a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)],
                             kw, "relu") for i in range(batch)])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("algo,geometry", CASES, ids=CASE_IDS)
def test_per_sample_grads(algo, geometry):
    """vmap(grad): the backward's grad ops run batched (their register_vmap rules)."""
    x, w, b, kw = _data(geometry)

    def loss(conv):
        return lambda w, xi: conv(xi.unsqueeze(0), w).pow(2).sum()
    got = torch.func.vmap(torch.func.grad(loss(lambda x, w: fastconv.conv2d(x, w, b, **kw, algo=algo))),
                          in_dims=(None, 0))(w, x)
    want = torch.func.vmap(torch.func.grad(loss(lambda x, w: F.conv2d(x, w, b, **kw))),
                           in_dims=(None, 0))(w, x)
    torch.testing.assert_close(got, want)


def test_packed_inference_path_yields_to_forward_ad():
    """fastconv.nn.Conv2d's packed-weight inference path has no forward-mode rule: under
    forward AD the module takes the regular op, so the tangent is never dropped."""
    m = fastconv.nn.Conv2d(3, 4, 3, algo="direct").double()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 6, 6, dtype=torch.double)
    t = torch.randn_like(x)
    with fwAD.dual_level():
        got = fwAD.unpack_dual(m(fwAD.make_dual(x, t))).tangent
    assert got is not None
    torch.testing.assert_close(got, F.conv2d(t, m.weight, None, 1, 0))


# --- PyTorch's OpInfo samples and error inputs for conv2d ----------------------------------------
def _conv2d_opinfo():
    pytest.importorskip("expecttest")  # torch.testing._internal imports it
    frozen = torch.backends.flags_frozen()
    from torch.testing._internal.common_methods_invocations import op_db

    # Importing torch's test utilities freezes torch.backends flags for the whole process
    # (disable_global_flags); later tests set cudnn flags, so undo what this import did.
    if not frozen and torch.backends.flags_frozen():
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True

    ops = [op for op in op_db if op.name == "nn.functional.conv2d"]
    if not ops:
        pytest.skip("this torch has no conv2d OpInfo")
    return ops[0]


@pytest.mark.parametrize("algo", ALGOS)
def test_opinfo_samples(algo):
    op = _conv2d_opinfo()
    ran = 0
    for sample in op.sample_inputs("cpu", torch.float64, requires_grad=True):
        weight, bias = sample.args[0], sample.args[1] if len(sample.args) > 1 else None
        kw = dict(sample.kwargs)
        x4 = sample.input if sample.input.dim() == 4 else sample.input.unsqueeze(0)
        _, _, spec = fastconv.conv_spec(x4, weight, bias, **kw)
        if registry.get(algo).why_not(spec) is not None:
            continue
        ins = [t.detach().requires_grad_() if t is not None else None for t in (sample.input, weight, bias)]
        refs = [t.detach().requires_grad_() if t is not None else None for t in (sample.input, weight, bias)]
        out = fastconv.conv2d(*ins, **kw, algo=algo)
        want = F.conv2d(*refs, **kw)
        torch.testing.assert_close(out, want)
        g = torch.randn_like(want)
        got_g = torch.autograd.grad(out, [t for t in ins if t is not None], g, create_graph=True)
        want_g = torch.autograd.grad(want, [t for t in refs if t is not None], g, create_graph=True)
        for a, r in zip(got_g, want_g):
            torch.testing.assert_close(a, r)
        # Second order: the gradient of <grad_input, v> w.r.t. the weight.
        v = torch.randn_like(want_g[0])
        torch.testing.assert_close(torch.autograd.grad((got_g[0] * v).sum(), ins[1])[0],
                                   torch.autograd.grad((want_g[0] * v).sum(), refs[1])[0])
        ran += 1
    assert ran > 0


def test_opinfo_error_inputs():
    """Each of the OpInfo's error inputs raises an exception of F.conv2d's class."""
    op = _conv2d_opinfo()
    for err in op.error_inputs("cpu"):
        s = err.sample_input
        with pytest.raises(err.error_type):
            fastconv.conv2d(s.input, *s.args, **s.kwargs)


# --- Exception classes ---------------------------------------------------------------------------
_x, _w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
MALFORMED = {
    "bad stride": dict(args=(_x, _w), kw=dict(stride=0)),
    "bad padding": dict(args=(_x, _w), kw=dict(padding=-1)),
    "groups 0": dict(args=(_x, _w), kw=dict(groups=0)),
    "groups not dividing": dict(args=(_x, _w), kw=dict(groups=3)),
    "channel mismatch": dict(args=(_x, torch.randn(6, 3, 3, 3)), kw={}),
    "bias size": dict(args=(_x, _w, torch.randn(5)), kw={}),
    "kernel larger than input": dict(args=(_x, torch.randn(6, 4, 9, 9)), kw={}),
    "same with stride": dict(args=(_x, _w), kw=dict(padding="same", stride=2)),
    "5-D input": dict(args=(_x[None], _w), kw={}),
    "2-D input": dict(args=(_x[0, 0], _w), kw={}),
    "mixed dtypes": dict(args=(_x, _w.double()), kw={}),
    "bool tensors": dict(args=(_x.bool(), _w.bool()), kw={}),
    "dilation 0": dict(args=(_x, _w), kw=dict(dilation=0)),
    "padding string": dict(args=(_x, _w), kw=dict(padding="full")),
    "stride 3 values": dict(args=(_x, _w), kw=dict(stride=(1, 1, 1))),
    "stride float": dict(args=(_x, _w), kw=dict(stride=1.5)),
    "stride 2**64": dict(args=(_x, _w), kw=dict(stride=2**64)),
    "padding 2**62": dict(args=(_x, _w), kw=dict(padding=2**62)),
    "nested input": dict(args=(torch.nested.nested_tensor([_x[0], _x[1]]), _w), kw={}),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_exception_class_catches_like_torch(case):
    """`except E:` written for F.conv2d's exception catches fastconv's."""
    args, kw = MALFORMED[case]["args"], MALFORMED[case]["kw"]
    with pytest.raises(Exception) as theirs:
        F.conv2d(*args, **kw)
    with pytest.raises(type(theirs.value)) as ours:
        fastconv.conv2d(*args, **kw)
    assert str(ours.value).startswith("fastconv.conv2d:"), str(ours.value)


def test_error_classes_keep_the_old_bases():
    assert issubclass(fastconv.ConvValueError, RuntimeError) and issubclass(fastconv.ConvValueError, ValueError)
    assert issubclass(fastconv.ConvTypeError, RuntimeError) and issubclass(fastconv.ConvTypeError, TypeError)
    assert issubclass(fastconv.ConvNotImplementedError, NotImplementedError)


# --- Argument kinds F.conv2d accepts -----------------------------------------------------------
@pytest.mark.parametrize("stride", [np.int64(2), torch.tensor(2), (np.int32(2), torch.tensor(1))],
                         ids=["numpy_int64", "0d_tensor", "mixed_pair"])
def test_integer_like_arguments(stride):
    x, w = torch.randn(1, 2, 7, 7), torch.randn(3, 2, 3, 3)
    torch.testing.assert_close(fastconv.conv2d(x, w, stride=stride, padding=np.int64(1)),
                               F.conv2d(x, w, stride=stride, padding=1))


def test_stride_too_large_for_int64_names_it():
    with pytest.raises(ValueError, match=r"stride=18446744073709551616 does not fit in int64"):
        fastconv.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), stride=2**64)


def test_nested_input_clear_error():
    nt = torch.nested.nested_tensor([torch.randn(4, 8, 8), torch.randn(4, 6, 6)])
    with pytest.raises(NotImplementedError, match="nested tensor"):
        fastconv.conv2d(nt, _w)


# --- int64 overflow ---------------------------------------------------------------------------------
def test_padding_and_dilation_2_62_rejected():
    x, w = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3)
    with pytest.raises(RuntimeError, match="at most|larger than"):
        fastconv.conv2d(x, w, padding=2**62, dilation=2**62)
    # F.conv2d wraps around here and returns a 4x4 output; the dilated kernel is 2**63 + 1.
    with pytest.raises(RuntimeError, match="does not fit in int64"):
        fastconv.conv2d(x, w, dilation=2**62)


@pytest.mark.parametrize("family", ["reference", "im2col", "direct"])
def test_ops_check_overflow_before_arithmetic(family):
    """The C++ ops, called directly: the padded size would wrap to a negative number."""
    op = getattr(torch.ops.fastconv, f"{family}_conv2d")
    x, w = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3)
    big = 2**62
    with pytest.raises(RuntimeError, match="does not fit in int64") as info:
        op(x, w, None, [1, 1], [big, big, 0, 0], [1, 1], 1)
    assert "-9223372036854775804" not in str(info.value)
    with pytest.raises(RuntimeError, match="does not fit in int64"):
        op(x, w, None, [1, 1], [0, 0, 0, 0], [big, 1], 1)


# --- Empty channels, meta tensors ------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_conv_empty_channel(bias):
    """PyTorch's test_conv_empty_channel: F.conv2d's output, and zero gradients everywhere."""
    mod = torch.nn.Conv2d(0, 33, 3, stride=2, bias=bias)
    x = torch.randn(2, 0, 50, 100, requires_grad=True)
    out = fastconv.conv2d(x, mod.weight, mod.bias, 2)
    ref = F.conv2d(x, mod.weight, mod.bias, 2)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    out.backward(torch.rand_like(out))
    assert torch.equal(x.grad, torch.zeros_like(x))
    for p in mod.parameters():
        assert p.grad is None or torch.equal(p.grad, torch.zeros_like(p))


@pytest.mark.parametrize("algo", ["auto"] + [a.name for a in registry.algorithms(include_internal=True)])
def test_meta_tensors_propagate_shapes(algo):
    x = torch.empty(2, 6, 9, 8, device="meta")
    groups = 6 if algo in ("depthwise", "triton_depthwise") else (
        3 if algo == "triton_grouped" else 1)
    w = torch.empty(12, 6 // groups, 3, 2, device="meta")
    out = fastconv.conv2d(x, w, None, (2, 1), 1, groups=groups, algo=algo)
    ref = F.conv2d(x, w, None, (2, 1), 1, groups=groups)
    assert out.device.type == "meta" and out.shape == ref.shape


# --- Fused activations: NaN and Inf exactly as torch's --------------------------------------
SPECIAL = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 3.0, 7.0]
TORCH_ACT = {"relu": torch.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu}


def _torch_activation(activation, z):
    """torch's activation, elementwise through its scalar kernels: for NaN, torch's vectorized
    hardtanh_backward (relu6) gives 0 and its scalar one passes the gradient (torch 2.13;
    threshold_backward passes it in both), and vectorized float32 GELU gives NaN for +Inf
    where its scalar path and float64 give +Inf. fastconv follows the scalar definitions."""
    return torch.cat([TORCH_ACT[activation](t) for t in z.flatten().split(1)]).reshape(z.shape)


@pytest.mark.parametrize("activation", list(TORCH_ACT))
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_propagates_nan_and_inf(algo, activation, dtype):
    """Each pre-activation value reaches the epilogue as x * 1 (1x1 conv, weights 1)."""
    c = 2 if algo == "depthwise" else 1
    vals = torch.tensor(SPECIAL * 2, dtype=dtype)  # 14 pixels a row: vector and tail lanes
    x = vals.reshape(1, 1, 2, 7).repeat(1, c, 4, 1).requires_grad_()  # (1, c, 8, 7)
    w = torch.ones(2, 1, 1, 1, dtype=dtype)
    out = fastconv.conv2d(x, w, None, groups=c, algo=algo, activation=activation)
    xr = x.detach().clone().requires_grad_()
    ref = _torch_activation(activation, F.conv2d(xr, w, None, groups=c))
    torch.testing.assert_close(out, ref, equal_nan=True)
    g = torch.ones_like(ref)
    gx, = torch.autograd.grad(out, x, g)
    gref, = torch.autograd.grad(ref, xr, g)
    torch.testing.assert_close(gx, gref, equal_nan=True)


def test_fuse_keeps_nan_like_the_model():
    x = torch.tensor([[[[float("nan"), 1.0], [-1.0, 2.0]]]])
    for act in (torch.nn.ReLU(), torch.nn.ReLU6()):
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), act).eval()
        with torch.no_grad():
            model[0].weight.fill_(1.0)
            model[0].bias.fill_(0.0)
        torch.testing.assert_close(fastconv.fuse(model)(x), model(x), equal_nan=True)


def test_relu_gradient_with_nan_or_inf_upstream():
    """threshold_backward: a masked element's gradient is 0 even when upstream is NaN/Inf."""
    x = torch.tensor([[[[-1.0, 2.0]]]], requires_grad=True)
    w = torch.ones(1, 1, 1, 1)
    for algo in ALGOS:
        if algo == "depthwise":
            continue
        gx, = torch.autograd.grad(fastconv.conv2d(x, w, algo=algo, activation="relu"), x,
                                  torch.tensor([[[[float("inf"), float("nan")]]]]))
        assert gx[0, 0, 0, 0] == 0 and gx[0, 0, 0, 1].isnan(), algo


# --- The padding rule for NaN and Inf -------------------------------------------------------
# One rule: a tap that falls in the padding contributes nothing (the reference loop nest).
# Two paths break it by design, multiplying a stored 0 for each padded tap (Inf * 0 = NaN,
# 0 * NaN = NaN): im2col's column buffer, multiplied in ATen's BLAS GEMM, and depthwise's
# NCHW path, which copies input (forward) and grad_output rows into zero-padded,
# stride-phase-split line buffers so that every tap is one contiguous load. Masking either
# would cost the layout its design; F.conv2d's own backends differ here too.
PADDING_RULE_EXCEPTIONS = {
    ("im2col", "nchw", "dense"): "padded taps are stored zeros multiplied in a BLAS GEMM",
    ("im2col", "nhwc", "dense"): "padded taps are stored zeros multiplied in a BLAS GEMM",
    ("im2col", "nchw", "grouped"): "padded taps are stored zeros multiplied in a BLAS GEMM",
    ("im2col", "nhwc", "grouped"): "padded taps are stored zeros multiplied in a BLAS GEMM",
    ("depthwise", "nchw", "depthwise"): "rows copied into zero-padded line buffers; every tap runs",
    # direct's dense grad_weight is im2col's GEMM (csrc/direct.cpp: 1.4-12x faster there).
    ("direct", "nchw", "dense"): "dense grad_weight runs im2col's BLAS GEMM over stored zeros",
    ("direct", "nhwc", "dense"): "dense grad_weight runs im2col's BLAS GEMM over stored zeros",
}
if fastconv._C.cpu_isa() == "avx512":
    # direct's cross-group AVX-512 tiles (Cg == Kg <= 16) copy the input once into a
    # zero-padded, group-blocked layout and run every tap over it.
    for _layout in ("nchw", "nhwc"):
        PADDING_RULE_EXCEPTIONS["direct", _layout, "grouped"] = "zero-padded group-blocked copy"
# (channels, groups) of each kind; grouped: 4 channels per group in and out.
PADDING_KINDS = {"dense": (8, 1), "grouped": (16, 4), "depthwise": (8, 8)}
PADDING_CASES = [(a, k) for a in ALGOS for k in PADDING_KINDS if (a == "depthwise") == (k == "depthwise")]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("algo,kind", PADDING_CASES, ids=[f"{a}-{k}" for a, k in PADDING_CASES])
def test_padding_taps_contribute_nothing(algo, kind, layout):
    c, groups = PADDING_KINDS[kind]
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    # Positive input: the Inf taps of all channels add up to +Inf, never Inf - Inf.
    x = (torch.rand(1, c, 5, 5, dtype=torch.float32) + 0.5).contiguous(memory_format=fmt)
    w = torch.randn(c, c // groups, 3, 3, dtype=torch.float32)
    w[:, :, 0, 0] = float("inf")  # the top-left tap: in the padding for row 0 and column 0
    out = fastconv.conv2d(x, w, None, padding=1, groups=groups, algo=algo)
    # grad_output NaN at output (0, 0) only, where taps with r = 0 or s = 0 read padding.
    gy = torch.randn(1, c, 5, 5, dtype=torch.float32)
    gy[:, :, 0, 0] = float("nan")
    gw = getattr(torch.ops.fastconv, f"{algo}_conv2d_grad_weight")(
        gy.contiguous(memory_format=fmt), x, list(w.shape), [1, 1], [1] * 4, [1, 1], groups)
    follows = (out.isnan().sum() == 0 and out[:, :, 1:, 1:].isinf().all()
               and gw[:, :, 1:, 1:].isnan().all() and not gw[:, :, 0, :].isnan().any()
               and not gw[:, :, :, 0].isnan().any())
    assert bool(follows) == ((algo, layout, kind) not in PADDING_RULE_EXCEPTIONS), (
        f"{algo} {layout} {kind}: {int(out.isnan().sum())} NaN in the output, "
        f"{int(gw.isnan().sum())} in grad_weight")


# --- Up-front size check -----------------------------------------------------------------------
def test_output_too_large_is_refused_before_allocating():
    x = torch.zeros(1, 1, 1, 1).expand(2**20, 1, 2**10, 2**10)  # no memory behind it
    with pytest.raises(torch.OutOfMemoryError, match=r"needs 4194304\.0 GiB, more than the .* GiB"):
        fastconv.conv2d(x, torch.zeros(1024, 1, 1, 1))


def test_meta_output_has_no_size_limit():
    x = torch.empty(2**20, 1, 2**10, 2**10, device="meta")
    assert fastconv.conv2d(x, torch.empty(1024, 1, 1, 1, device="meta")).shape[1] == 1024


# --- Accuracy of grouped grad_weight --------------------------------------------------------
@pytest.mark.parametrize("algo", ["direct", "im2col"])
def test_grouped_grad_weight_float32_accuracy(algo):
    """Within 4x of aten's float32 error against float64."""
    gen = torch.Generator().manual_seed(0)
    n, c, hw, k, g = 8, 64, 28, 64, 32
    x = torch.randn(n, c, hw, hw, generator=gen)
    dy = torch.randn(n, k, hw, hw, generator=gen)
    args = ([1, 1], [1, 1], [1, 1], False, [0, 0], g, [False, True, False])
    ref = torch.ops.aten.convolution_backward(dy.double(), x.double(),
                                              torch.empty(k, c // g, 3, 3, dtype=torch.double),
                                              None, *args)[1]
    aten = torch.ops.aten.convolution_backward(dy, x, torch.empty(k, c // g, 3, 3), None, *args)[1]
    ours = getattr(torch.ops.fastconv, f"{algo}_conv2d_grad_weight")(
        dy, x, [k, c // g, 3, 3], [1, 1], [1] * 4, [1, 1], g)
    scale = ref.abs().max()
    err = ((ours.double() - ref).abs().max() / scale).item()
    aten_err = ((aten.double() - ref).abs().max() / scale).item()
    assert err < 4 * aten_err, (err, aten_err)


# --- The fuzz command, a short seeded slice (CI) -------------------------------------------
@pytest.mark.slow
def test_fuzz_short_slice():
    from fastconv.testing import fuzz

    names = [n for n, _ in fuzz._hostile()]
    pick = [names.index(n) for n in ("stride 2**64", "padding 2**62 dilation 2**62",
                                     "zero input channels with bias", "nested input",
                                     "meta tensors", "inf weight with padding", "output of 4 TiB")]
    proc = subprocess.run([sys.executable, "-m", "fastconv.testing.fuzz", "--n", "30", "--seed",
                           "15", "--hostile-cases", ",".join(map(str, pick))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "random: 30 configs" in proc.stdout and f"hostile: {len(pick)} cases, 0 failed" in proc.stdout


def test_fuzz_reports_a_crash_as_a_crash(monkeypatch, tmp_path):
    """A worker killed by a signal mid-case: the case is reported as a crash, the rest run."""
    from fastconv.testing import fuzz

    # sitecustomize in the worker's path makes hostile case 1 kill its process.
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\n"
        "import fastconv.testing.fuzz as f\n"
        "_orig = f.check_hostile\n"
        "def check_hostile(i):\n"
        "    if i == 1:\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    return _orig(i)\n"
        "f.check_hostile = check_hostile\n")
    import os
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    res = fuzz.run_cases("hostile", [0, 1, 2], env=env, log=lambda *a: None)
    by_index = {r["index"]: r for r in res}
    assert "crash" in by_index[1] and "exit status -11" in by_index[1]["crash"]
    assert by_index[0]["ok"] and by_index[2]["ok"]
