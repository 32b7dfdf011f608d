"""1x1 layers on our packed AVX-512 GEMM (csrc/pointwise_gemm_avx512.cpp, run by
pointwise_conv2d_packed on cached panels, and by im2col's functional 1x1 path on small
layers, packing panels per task; larger ones call MKL's sgemm directly): forward against
F.conv2d in float64 over the shapes that exercise its tiles (channel tails of the 32-wide
panels and 8-channel NCHW tiles, pixel tails of the 14-row and 48-pixel tiles, reductions
longer than one KC block, strides, batches, groups of pixel blocks), every layout and
activation, on every ISA this machine has (other ISAs take im2col's BLAS path); the
packed-weight ops modules use, the plain loop nest over the same panels, thread-count
determinism, and the checks of bad input."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
from torch._prims_common import suggest_memory_format

from fastconv import _C
from helpers import SUPPORTED_ISAS, isa_path

ops = torch.ops.fastconv
CL = torch.channels_last
ACTS = ("none", "relu", "relu6", "silu", "gelu")
KC = _C.blocking()["gemm_avx512_kc"]
PANEL = _C.blocking()["gemm_avx512_panel_width"]


def case(n, c, h, w, k, stride=1, id=None):
    return pytest.param(dict(n=n, c=c, h=h, w=w, k=k, stride=stride), id=id)


CASES = [
    case(1, 64, 7, 7, 256, id="49px"),  # ResNet-50 layer 4 at batch 1, scaled down
    case(2, 16, 5, 3, 32, id="15px-2img"),
    case(1, 3, 1, 1, 1, id="one-pixel-one-channel"),
    case(3, 24, 4, 5, 40, id="k-tail-8"),  # 40 = one full panel + 8 channels
    case(2, 40, 6, 6, 13, id="k-tail-13"),
    case(1, 17, 17, 3, 70, id="k-tail-6-px-51"),
    case(2, 2 * KC + 9, 3, 5, 48, id="three-kc-blocks"),
    case(1, KC, 16, 16, 64, id="one-kc-block-256px"),
    case(2, 32, 9, 9, 64, stride=2, id="stride2"),
    case(1, 24, 10, 7, 24, stride=(2, 3), id="stride23"),
    case(1, 16, 30, 30, 16, id="900px-blocks"),  # several pixel blocks per task split
    # Functional calls pack panels per task: pixel blocks in groups of 3 (the last one
    # shorter), each panel packed again per group.
    case(3, 300, 20, 25, 40, id="pixel-block-groups"),
    case(2, 48, 14, 14, 64, stride=2, id="stride2-7x7-planes"),  # NCHW strided: packs per task
]
LAYOUTS = ("nchw", "nhwc", "x_nchw_w_cl", "x_cl_w_nchw")


def make(cfg, layout, dtype=torch.float32, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"], dtype=dtype, generator=g)
    w = torch.randn(cfg["k"], cfg["c"], 1, 1, dtype=dtype, generator=g)
    b = torch.randn(cfg["k"], dtype=dtype, generator=g) if bias else None
    if layout in ("nhwc", "x_cl_w_nchw"):
        x = x.contiguous(memory_format=CL)
    if layout in ("nhwc", "x_nchw_w_cl"):
        w = w.contiguous(memory_format=CL)
    return x, w, b


def stride2(cfg):
    s = cfg["stride"]
    return list(s) if isinstance(s, tuple) else [s, s]


def reference(x, w, b, stride, act):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride)
    return fastconv._ops.apply_activation(y, act)


def assert_close(got, want, c):
    assert not got.isnan().any(), "NaN in output (unwritten elements?)"
    # float32 products summed over c channels: error grows like sqrt(c).
    tol = 2e-6 * max(c, 16) ** 0.5 * max(want.abs().max().item(), 1.0)
    err = (got.double() - want).abs().max().item()
    assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", CASES)
def test_forward(cfg, layout, isa):
    x, w, b = make(cfg, layout)
    stride = stride2(cfg)
    act = ACTS[hash(cfg["k"] * 7 + cfg["c"]) % len(ACTS)]
    with isa_path(isa):
        y = ops.im2col_conv2d(x, w, b, stride, [0, 0, 0, 0], [1, 1], 1, act)
    assert_close(y, reference(x, w, b, stride, act), cfg["c"])
    assert y.is_contiguous(memory_format=fastconv._ops.output_memory_format(x, w))


@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_epilogue(act, bias, layout):
    cfg = dict(n=2, c=40, h=5, w=7, k=48, stride=1)
    x, w, b = make(cfg, layout, bias=bias)
    packed = ops.pointwise_pack_weight(w)
    y = ops.pointwise_conv2d_packed(x, packed, list(w.shape), b, [1, 1], [0, 0, 0, 0], [1, 1], 1, act)
    assert_close(y, reference(x, w, b, [1, 1], act), cfg["c"])


def test_nan_through_relu():
    """max(0, v) keeps NaN, as torch.relu does."""
    for layout in ("nchw", "nhwc"):
        x, w, b = make(dict(n=1, c=16, h=4, w=4, k=32), layout)
        x[0, 3, 1, 2] = float("nan")
        y = ops.pointwise_conv2d_packed(x, ops.pointwise_pack_weight(w), list(w.shape), b,
                                        [1, 1], [0, 0, 0, 0], [1, 1], 1, "relu")
        assert y[0, :, 1, 2].isnan().all() and not y[0, :, 0, 0].isnan().any()


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("cfg", CASES)
def test_packed_and_naive(cfg, layout, isa):
    """The packed op (what modules run) and the plain loop nest over the same panels; the
    panels unpack to the weight."""
    x, w, b = make(cfg, layout)
    stride = stride2(cfg)
    geo = (stride, [0, 0, 0, 0], [1, 1], 1)
    want = reference(x, w, b, stride, "relu")
    packed = ops.pointwise_pack_weight(w)
    assert list(packed.shape) == [-(-cfg["k"] // PANEL), cfg["c"], PANEL]
    with isa_path(isa):
        y = ops.pointwise_conv2d_packed(x, packed, list(w.shape), b, *geo, "relu")
    assert_close(y, want, cfg["c"])
    assert y.is_contiguous(memory_format=suggest_memory_format(x))
    xd, pd, bd = x.double(), ops.pointwise_pack_weight(w.double()), b.double()
    naive = ops.pointwise_naive_conv2d(xd, pd, list(w.shape), bd, *geo, "relu")
    torch.testing.assert_close(naive, want, rtol=1e-10, atol=1e-10)
    # Padding lanes of the last panel are zeros.
    flat = packed.permute(0, 2, 1).reshape(-1, cfg["c"])
    torch.testing.assert_close(flat[:cfg["k"]], w.reshape(cfg["k"], cfg["c"]), rtol=0, atol=0)
    assert not flat[cfg["k"]:].any()


def test_packed_with_padding_falls_back():
    """Padding is not the GEMM's case: the packed op unpacks and runs im2col."""
    x, w, b = make(dict(n=1, c=16, h=5, w=5, k=32), "nhwc")
    y = ops.pointwise_conv2d_packed(x, ops.pointwise_pack_weight(w), list(w.shape), b, [1, 1],
                                    [1, 0, 0, 1], [1, 1], 1, "none")
    want = F.conv2d(F.pad(x.double(), (0, 1, 1, 0)), w.double(), b.double())
    assert_close(y, want, 16)


@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("cfg", [
    dict(n=2, c=KC + 40, h=9, w=11, k=72, stride=1),
    dict(n=3, c=300, h=20, w=25, k=40, stride=1),  # groups of pixel blocks (functional)
    dict(n=2, c=48, h=14, w=14, k=64, stride=2),  # NCHW strided: per-task packing too
    # NCHW stride 1 on MKL, one image: the plane cut in two (few channels), or the channels.
    dict(n=1, c=40, h=12, w=11, k=64, stride=1),
    dict(n=1, c=40, h=6, w=6, k=160, stride=1),
], ids=["kc-tail", "pixel-block-groups", "stride2", "one-image-halves", "one-image-channel-halves"])
def test_one_and_two_threads_identical(layout, cfg):
    """Tasks own whole output tiles and every element is one FMA chain in channel order."""
    x, w, b = make(cfg, layout)
    s = [cfg["stride"]] * 2
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(ops.pointwise_conv2d_packed(x, ops.pointwise_pack_weight(w), list(w.shape),
                                                    b, s, [0, 0, 0, 0], [1, 1], 1, "none"))
            outs.append(ops.im2col_conv2d(x, w, b, s, [0, 0, 0, 0], [1, 1], 1, "none"))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])


def test_bad_input_raises():
    x = torch.randn(1, 16, 4, 4)
    w = torch.randn(32, 16, 1, 1)
    packed = ops.pointwise_pack_weight(w)
    geo = ([1, 1], [0, 0, 0, 0], [1, 1])
    with pytest.raises(RuntimeError, match="1x1 weight"):
        ops.pointwise_pack_weight(torch.randn(32, 16, 3, 3))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.pointwise_pack_weight(w.half())
    with pytest.raises(RuntimeError, match="packed_weight has shape"):
        ops.pointwise_conv2d_packed(x, packed[:, :8], [32, 16, 1, 1], None, *geo, 1)
    with pytest.raises(RuntimeError, match="one group"):
        ops.pointwise_conv2d_packed(x, packed, [32, 8, 1, 1], None, *geo, 2)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.pointwise_conv2d_packed(x.double(), packed, [32, 16, 1, 1], None, *geo, 1)
    with pytest.raises(RuntimeError):
        ops.pointwise_conv2d_packed(torch.randn(1, 8, 4, 4), packed, [32, 16, 1, 1], None, *geo, 1)


def test_module_caches_panels():
    """fastconv.nn.Conv2d at inference packs a 1x1 layer's panels once, repacks after an
    in-place weight update, and 3x3 im2col layers have no packed path."""
    torch.manual_seed(0)
    m = fastconv.nn.Conv2d(32, 64, 1, algo="im2col").eval()
    x = torch.randn(1, 32, 7, 7).contiguous(memory_format=CL)
    with torch.no_grad():
        y = m(x)
        assert m.packed_weight_cached == (fastconv._C.cpu_isa() == "avx512")
        torch.testing.assert_close(y, F.conv2d(x, m.weight, m.bias), rtol=1e-4, atol=1e-4)
        m.weight.mul_(2)
        torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias), rtol=1e-4, atol=1e-4)
    m3 = fastconv.nn.Conv2d(8, 8, 3, algo="im2col").eval()
    with torch.no_grad():
        m3(torch.randn(1, 8, 5, 5))
    assert not m3.packed_weight_cached


# --- direct's blocked AVX-512 weight layout, packed once (modules cache it) ---------------

BLOCKED = [
    pytest.param((2, 32, 7, 6), (32, 32, 3, 3), 1, 1, id="dense-32"),
    pytest.param((1, 16, 5, 5), (48, 16, 3, 3), 1, 2, id="dense-48-s2"),
    pytest.param((2, 32, 6, 6), (32, 4, 3, 3), 8, 1, id="narrow-g8"),
    pytest.param((1, 64, 4, 4), (64, 32, 1, 3), 2, 1, id="wide-g2"),
]


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("xs,ws,groups,stride", BLOCKED)
def test_direct_blocked_packed(xs, ws, groups, stride, layout, isa):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(*xs, generator=g), torch.randn(*ws, generator=g), torch.randn(ws[0], generator=g)
    if layout == "nhwc":
        x = x.contiguous(memory_format=CL)
    geo = ([stride, stride], [1, 1, 1, 1], [1, 1], groups)
    want = F.conv2d(x.double(), w.double(), b.double(), stride, 1, 1, groups).relu()
    if not _C.direct_blocked_weight_applies(torch.float32, ws[0], ws[1], groups):
        pytest.skip("no AVX-512: the blocked layout does not apply")
    packed = ops.direct_pack_blocked_weight(w, groups)
    with isa_path(isa):  # other ISAs unpack and run direct's own tiles
        y = ops.direct_conv2d_blocked_packed(x, packed, list(w.shape), b, *geo, "relu")
        same = ops.direct_conv2d(x, w, b, *geo, "relu")
    assert_close(y, want, ws[1] * ws[2] * ws[3])
    assert y.is_contiguous(memory_format=suggest_memory_format(x))
    torch.testing.assert_close(same, y, rtol=0, atol=0)  # the same kernels, packed once


def test_direct_blocked_bad_input():
    w = torch.randn(32, 32, 3, 3)
    x = torch.randn(1, 32, 5, 5)
    geo = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match="blocked layout needs"):
        ops.direct_pack_blocked_weight(torch.randn(24, 24, 3, 3), 1)
    with pytest.raises(RuntimeError, match="blocked layout needs"):
        ops.direct_pack_blocked_weight(w.double(), 1)
    if not _C.direct_blocked_weight_applies(torch.float32, 32, 32, 1):
        return
    packed = ops.direct_pack_blocked_weight(w, 1)
    with pytest.raises(RuntimeError, match="packed_weight has shape"):
        ops.direct_conv2d_blocked_packed(x, packed, [32, 32, 1, 1], None, *geo)
    with pytest.raises(RuntimeError, match="contiguous"):
        strided = packed.transpose(-1, -2).contiguous().transpose(-1, -2)
        ops.direct_conv2d_blocked_packed(x, strided, list(w.shape), None, *geo)


def test_module_caches_blocked_weight():
    """fastconv.nn.Conv2d(algo='direct') at inference packs the blocked layout once."""
    torch.manual_seed(0)
    m = fastconv.nn.Conv2d(32, 64, 3, padding=1, algo="direct").eval()
    x = torch.randn(1, 32, 14, 14).contiguous(memory_format=CL)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, F.conv2d(x, m.weight, m.bias, 1, 1), rtol=1e-4, atol=1e-4)
        blocked = fastconv._C.cpu_isa() == "avx512"
        assert m._packed_weight.dim() == (7 if blocked else 6)
        m.weight.mul_(-1)
        torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, 1, 1), rtol=1e-4, atol=1e-4)
