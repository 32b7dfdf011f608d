"""The direct algorithm (csrc/direct.cpp): forward, both gradients, the packed-weight
op and the plain loop nest, against torch.nn.functional.conv2d."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv._cpu import direct_packed_shape, direct_unpack_weight
from fastconv._ops import apply_activation

from helpers import SUPPORTED_ISAS, isa_path

ops = torch.ops.fastconv

# (N, C, H, W, K, R, S, stride, padding (top, bottom, left, right), dilation, groups)
CASES = [
    (2, 8, 9, 10, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),      # one oc-vector pair
    (1, 5, 11, 13, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),     # odd oc-block count
    (2, 6, 10, 9, 12, 3, 2, (2, 1), (0, 1, 2, 0), (1, 1), 1),      # non-square, asymmetric pad
    (1, 4, 15, 14, 16, 5, 3, (2, 3), (2, 1, 1, 2), (1, 2), 1),     # stride 2x3, dilation
    (2, 6, 12, 12, 9, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 3),      # groups, Kg=3 (tail)
    (1, 8, 8, 9, 20, 1, 3, (1, 2), (0, 0, 1, 1), (1, 1), 2),       # groups, Kg=10
    (1, 3, 23, 21, 16, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),     # stem-like 7x7 s2
    (2, 4, 7, 7, 8, 3, 3, (3, 3), (1, 1, 1, 1), (1, 1), 1),        # stride > kernel reach
    (1, 4, 6, 6, 16, 2, 2, (2, 2), (0, 1, 0, 1), (1, 1), 1),       # 'same'-style even kernel
    (1, 2, 5, 30, 16, 3, 3, (1, 1), (4, 0, 5, 3), (1, 1), 1),      # pad larger than kernel
    (1, 4, 9, 9, 32, 4, 4, (2, 2), (1, 2, 2, 1), (2, 1), 1),       # 2 full pairs, dil/stride mix
    (1, 3, 6, 40, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),       # Kg=8: 1x12 tile
    (1, 6, 5, 5, 6, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 2),        # 1x1, Kg=3
    (1, 16, 4, 4, 16, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 16),     # depthwise through direct
    (1, 40, 6, 7, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),      # input-channel blocks (28 + 12)
    (1, 12, 9, 9, 16, 7, 7, (1, 1), (3, 2, 3, 3), (1, 1), 1),      # 7x7: blocks of 5 channels
]
IDS = [f"case{i}" for i in range(len(CASES))]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}


@pytest.fixture(params=["avx512", "avx2", "portable"])
def path(request):
    with isa_path(request.param):
        yield request.param


def ref_conv(x, w, b, stride, padding, dilation, groups):
    top, bottom, left, right = padding
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride, 0, dilation, groups)


def make(case, dtype, layout, bias=True, seed=0):
    n, c, h, wd, k, r, s, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, wd, generator=g, dtype=dtype)
    w = torch.randn(k, c // groups, r, s, generator=g, dtype=dtype)
    b = torch.randn(k, generator=g, dtype=dtype) if bias else None
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b, stride, padding, dilation, groups


def close(a, b, dtype, scale=1.0):
    tol = TOL[dtype]
    torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)


def geometry(x, w, stride, padding, dilation, groups):
    return list(stride), list(padding), list(dilation), groups


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_and_grads(case, layout, dtype, path):
    x, w, b, stride, padding, dilation, groups = make(case, dtype, layout)
    geo = (list(stride), list(padding), list(dilation), groups)
    y = ops.direct_conv2d(x, w, b, *geo)
    # Reference gradients in float64 for a tight comparison.
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    ref = ref_conv(xd, wd, b.double(), stride, padding, dilation, groups)
    assert y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "nhwc"
                           else torch.contiguous_format)
    reduction = w.shape[1] * w.shape[2] * w.shape[3]
    close(y.double(), ref.detach(), dtype, scale=reduction ** 0.5)
    gy = torch.randn(ref.shape, dtype=torch.float64)
    gx_ref, gw_ref = torch.autograd.grad(ref, (xd, wd), gy)
    gyt = gy.to(dtype).contiguous(memory_format=torch.channels_last if layout == "nhwc"
                                  else torch.contiguous_format)
    gx = ops.direct_conv2d_grad_input(gyt, w, list(x.shape), *geo)
    gw = ops.direct_conv2d_grad_weight(gyt, x, list(w.shape), *geo)
    assert gx.shape == x.shape and gw.shape == w.shape
    close(gx.double(), gx_ref, dtype, scale=reduction ** 0.5)
    pixels = gy.shape[0] * gy.shape[2] * gy.shape[3]
    close(gw.double(), gw_ref, dtype, scale=pixels ** 0.5)


@pytest.mark.parametrize("case", CASES[:7], ids=IDS[:7])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_naive_loop_nest_and_packed(case, layout):
    x, w, b, stride, padding, dilation, groups = make(case, torch.float64, layout)
    geo = (list(stride), list(padding), list(dilation), groups)
    ref = ref_conv(x, w, b, stride, padding, dilation, groups)
    close(ops.direct_naive_conv2d(x, w, b, *geo), ref, torch.float64)
    packed = ops.direct_pack_weight(w, groups)
    assert list(packed.shape) == direct_packed_shape(list(w.shape), groups, w.dtype)
    # The tail block's padding channels are zero.
    kg, blk = w.shape[0] // groups, packed.shape[-1]
    if kg % blk:
        assert packed[:, -1, ..., kg % blk:].abs().sum() == 0
    torch.testing.assert_close(direct_unpack_weight(packed, list(w.shape), groups), w,
                               rtol=0, atol=0)
    y_packed = ops.direct_conv2d_packed(x, packed, list(w.shape), b, *geo)
    assert torch.equal(y_packed, ops.direct_conv2d(x, w, b, *geo))


@pytest.mark.parametrize("activation", ["relu", "relu6", "silu", "gelu"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_bias_activation(activation, layout, dtype, path):
    x, w, b, stride, padding, dilation, groups = make(CASES[1], dtype, layout)
    x = x * 2  # put values on both sides of relu6's upper knee
    geo = (list(stride), list(padding), list(dilation), groups)
    ref = apply_activation(ref_conv(x.double(), w.double(), b.double(), stride, padding,
                                    dilation, groups), activation)
    close(ops.direct_conv2d(x, w, b, *geo, activation).double(), ref, dtype, scale=10)
    close(ops.direct_naive_conv2d(x, w, b, *geo, activation).double(), ref, dtype, scale=10)


def test_no_bias_and_weight_channels_last():
    x, w, _, stride, padding, dilation, groups = make(CASES[3], torch.float64, "nchw", bias=False)
    w = w.contiguous(memory_format=torch.channels_last)
    y = ops.direct_conv2d(x, w, None, list(stride), list(padding), list(dilation), groups)
    assert y.is_contiguous(memory_format=torch.channels_last)  # PyTorch's rule
    close(y, ref_conv(x, w, None, stride, padding, dilation, groups), torch.float64)


def test_batch_zero():
    x, w, b, stride, padding, dilation, groups = make(CASES[2], torch.float64, "nchw")
    x = x[:0]
    geo = (list(stride), list(padding), list(dilation), groups)
    y = ops.direct_conv2d(x, w, b, *geo)
    ref = ref_conv(x, w, b, stride, padding, dilation, groups)
    assert y.shape == ref.shape
    gx = ops.direct_conv2d_grad_input(torch.empty_like(ref), w, list(x.shape), *geo)
    assert gx.shape == x.shape
    gw = ops.direct_conv2d_grad_weight(torch.empty_like(ref), x, list(w.shape), *geo)
    assert torch.equal(gw, torch.zeros_like(w))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_contiguous(dtype, path):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 10, 13, 17, generator=g, dtype=dtype)
    x = base[:, 1:9:2, 1:, ::2]                     # strided in every dim
    w = torch.randn(3, 12, 3, 3, generator=g, dtype=dtype).permute(1, 0, 2, 3)[:, :2]  # [12,2,3,3]
    w = w[:, :, :, :]  # non-contiguous view
    assert not x.is_contiguous() and not w.is_contiguous()
    b = torch.randn(12, generator=g, dtype=dtype)
    geo = ([1, 2], [1, 0, 2, 1], [1, 1], 2)
    ref = ref_conv(x.double(), w.double(), b.double(), (1, 2), (1, 0, 2, 1), (1, 1), 2)
    close(ops.direct_conv2d(x, w, b, *geo).double(), ref, dtype, scale=5)
    gy = torch.randn(ref.shape, generator=g, dtype=dtype).transpose(2, 3).contiguous().transpose(2, 3)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    gx_ref, gw_ref = torch.autograd.grad(
        ref_conv(xd, wd, None, (1, 2), (1, 0, 2, 1), (1, 1), 2), (xd, wd), gy.double())
    close(ops.direct_conv2d_grad_input(gy, w, list(x.shape), *geo).double(), gx_ref, dtype, scale=5)
    close(ops.direct_conv2d_grad_weight(gy, x, list(w.shape), *geo).double(), gw_ref, dtype,
          scale=10)


# A dense layer, and grouped ones the blocked AVX-512 tiles run (4 and 32 channels per group).
THREAD_CASES = [CASES[10], (2, 32, 9, 10, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 8),
                (2, 64, 8, 7, 64, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 2)]


@pytest.mark.parametrize("case", THREAD_CASES, ids=["dense", "kg4", "kg32_s2"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_threads_give_identical_results(case, layout):
    x, w, b, stride, padding, dilation, groups = make(case, torch.float32, layout)
    geo = (list(stride), list(padding), list(dilation), groups)
    gy = torch.randn(ops.direct_conv2d(x, w, b, *geo).shape)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((ops.direct_conv2d(x, w, b, *geo),
                            ops.direct_conv2d_grad_input(gy, w, list(x.shape), *geo),
                            ops.direct_conv2d_grad_weight(gy, x, list(w.shape), *geo)))
    finally:
        torch.set_num_threads(old)
    for a, c in zip(*results):
        assert torch.equal(a, c)


@pytest.mark.parametrize("activation", ["none", "relu", "silu"])
def test_packed_autograd(activation):
    """Gradients flow through direct_pack_weight + direct_conv2d_packed to the weight."""
    x, w, b, stride, padding, dilation, groups = make(CASES[4], torch.float64, "nchw")
    geo = (list(stride), list(padding), list(dilation), groups)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    packed = ops.direct_pack_weight(w, groups)
    y = ops.direct_conv2d_packed(x, packed, list(w.shape), b, *geo, activation)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), gy)
    ref = apply_activation(ref_conv(x, w, b, stride, padding, dilation, groups), activation)
    want = torch.autograd.grad(ref, (x, w, b), gy)
    for a, c in zip(got, want):
        close(a, c, torch.float64)


def test_functional_autograd_through_direct():
    x, w, b, *_ = make(CASES[0], torch.float64, "nhwc")
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    y = fastconv.conv2d(x, w, b, stride=1, padding=1, algo="direct")
    ref = F.conv2d(x, w, b, padding=1)
    gy = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad(y, (x, w, b), gy), torch.autograd.grad(ref, (x, w, b), gy)):
        close(a, c, torch.float64)


def test_bad_packed_weight_is_rejected():
    x, w, b, stride, padding, dilation, groups = make(CASES[0], torch.float32, "nchw")
    packed = ops.direct_pack_weight(w, groups)
    geo = (list(stride), list(padding), list(dilation), groups)
    with pytest.raises(RuntimeError, match="packed_weight has shape"):
        ops.direct_conv2d_packed(x, packed[:, :, 1:], list(w.shape), b, *geo)
    with pytest.raises(RuntimeError, match="same dtype"):
        ops.direct_conv2d_packed(x, packed.double(), list(w.shape), b, *geo)
    with pytest.raises(RuntimeError, match="does not divide"):
        ops.direct_pack_weight(w, 3)


def test_blocking_constants_exported():
    b = fastconv._C.blocking()
    assert b["direct_oc_block"] == 8
    assert b["direct_oc_vectors"] * b["direct_pixel_tile"] <= 12  # accumulators in 16 ymm
    for key in ("direct_pixel_tile_single", "direct_row_block", "direct_grad_weight_channel_tile"):
        assert b[key] > 0


def test_opcheck_extra_ops():
    """Schemas, fake kernels and autograd registration of direct's extra ops."""
    x = torch.randn(1, 6, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(12, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, dtype=torch.float64)
    pk = ops.direct_pack_weight(w.detach(), 2).requires_grad_()
    geo = ([1, 1], [1, 1, 1, 1], [1, 1], 2)
    torch.library.opcheck(ops.direct_pack_weight, (w, 2))
    torch.library.opcheck(ops.direct_conv2d_packed,
                          (x.requires_grad_(), pk, [12, 3, 3, 3], b, *geo, "relu"))
    torch.library.opcheck(ops.direct_naive_conv2d, (x.detach(), w.detach(), b, *geo, "none"))


@pytest.mark.parametrize("pack_isa", ["avx512", "avx2", "portable"])
@pytest.mark.parametrize("run_isa", ["avx512", "avx2", "portable"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_packed_block_follows_isa_and_runs_anywhere(pack_isa, run_isa, layout):
    """AVX-512 packs float32 groups of > 8 output channels 16 innermost; a weight packed on
    one path (a module's cache) gives the same result when run with any other path."""
    torch.manual_seed(0)
    x = torch.randn(2, 20, 9, 17)
    w = torch.randn(40, 10, 3, 3)  # groups=2: Kg = 20 -> blocks of 16 on AVX-512
    b = torch.randn(40)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    geo = ([1, 2], [1, 1, 2, 0], [1, 1], 2)
    with isa_path(pack_isa):
        packed = ops.direct_pack_weight(w, 2)
        assert packed.shape[-1] == (16 if pack_isa == "avx512" else 8)
        assert list(packed.shape) == direct_packed_shape(list(w.shape), 2)
    ref = ref_conv(x.double(), w.double(), b.double(), (1, 2), (1, 1, 2, 0), (1, 1), 2).float()
    with isa_path(run_isa):
        for act in ("none", "relu"):
            y = ops.direct_conv2d_packed(x, packed, list(w.shape), b, *geo, act)
            torch.testing.assert_close(y, apply_activation(ref, act), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("act", ["none", "relu", "relu6", "silu"])
def test_avx512_tiles_match_avx2(layout, act):
    """Every AVX-512 tile width (1..24 single, 1..12 pairs, border pixels) against the AVX2
    path, within float tolerance (same taps, same order per output; lanes differ)."""
    if "avx512" not in SUPPORTED_ISAS:
        pytest.skip("CPU has no AVX-512")
    torch.manual_seed(1)
    for kg, wd in ((16, 27), (32, 15), (40, 29), (24, 3)):
        x = torch.randn(1, 13, 5, wd)
        w = torch.randn(kg, 13, 3, 3)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        geo = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
        outs = {}
        for isa in ("avx512", "avx2"):
            with isa_path(isa):
                fastconv._C.set_debug_poison(True)
                try:
                    outs[isa] = ops.direct_conv2d(x, w, None, *geo, act)
                finally:
                    fastconv._C.set_debug_poison(False)
        assert not outs["avx512"].isnan().any()
        torch.testing.assert_close(outs["avx512"], outs["avx2"], rtol=1e-5, atol=1e-5)


# Layers that take the AVX-512 tiles over the padded, channel-blocked input
# (direct_blocked_avx512.cpp): narrow groups across lanes (Cg == Kg in 2, 4, 8) and
# 16-channel multiples (wide groups, dense layers; two vectors per tile when Kg % 32 == 0).
# (N, Kg (== Cg), groups, H, W, R, S, stride, padding (t, b, l, r), dilation)
GROUPS_CASES = [
    (2, 4, 8, 9, 30, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),     # ResNeXt layer1-like, 2 row tiles
    (1, 8, 6, 11, 13, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),    # stride 2
    (1, 2, 16, 7, 9, 3, 5, (1, 2), (2, 0, 1, 3), (2, 1)),     # 8 groups per vector, asymmetric
    (1, 16, 2, 6, 27, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1)),    # one group per vector, 27 = 14+13
    (1, 32, 2, 7, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),     # wide groups, 2 vectors x 7 pixels
    (2, 32, 1, 5, 31, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),    # dense, 31 = 14 + 9 + 8
    (1, 48, 1, 6, 9, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),     # dense 1x1, 3 single vectors
    (1, 16, 1, 9, 10, 5, 3, (2, 1), (2, 1, 0, 2), (1, 2)),    # dense, strides and dilation
    (2, 4, 8, 12, 11, 3, 3, (2, 2), (0, 0, 0, 0), (1, 1)),    # stride 2, unpadded: phases of 2 and 1 taps
    (1, 8, 4, 10, 10, 2, 2, (3, 3), (0, 0, 0, 0), (1, 1)),    # stride 3 > kernel: a phase no tap reaches
    (1, 16, 4, 9, 9, 3, 3, (2, 2), (4, 4, 4, 4), (1, 1)),     # padding past the kernel (no blocked phases)
    (4, 16, 1, 7, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),     # dense 7x7 planes: grad_input NHWC via im2col
]


@pytest.mark.parametrize("case", GROUPS_CASES, ids=[f"kg{c[1]}g{c[2]}_{i}" for i, c in enumerate(GROUPS_CASES)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("act", ["none", "relu6", "gelu"])
def test_blocked_tiles_avx512(case, layout, act):
    """The blocked AVX-512 tiles against float64 F.conv2d, directly and through a packed
    weight (a module's cache), with bias and fused activations, poisoned outputs."""
    if "avx512" not in SUPPORTED_ISAS:
        pytest.skip("CPU has no AVX-512")
    n, kg, g, h, wd, r, s, stride, pad, dil = case
    torch.manual_seed(2)
    x = torch.randn(n, kg * g, h, wd)
    w = torch.randn(kg * g, kg, r, s)
    b = torch.randn(kg * g)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    geo = (list(stride), list(pad), list(dil), g)
    ref = apply_activation(ref_conv(x.double(), w.double(), b.double(), stride, pad, dil, g), act)
    with isa_path("avx512"):
        fastconv._C.set_debug_poison(True)
        try:
            y = ops.direct_conv2d(x, w, b, *geo, act)
            y_packed = ops.direct_conv2d_packed(x, ops.direct_pack_weight(w, g), list(w.shape), b,
                                                *geo, act)
        finally:
            fastconv._C.set_debug_poison(False)
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "nhwc")
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(y, y_packed)


@pytest.mark.parametrize("case", GROUPS_CASES, ids=[f"kg{c[1]}g{c[2]}_{i}" for i, c in enumerate(GROUPS_CASES)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_groups_grad_input(case, layout, isa):
    """grad_input (stride 1 takes the blocked forward tiles on AVX-512 with the flipped,
    transposed weight) against float64 autograd through F.conv2d."""
    n, kg, g, h, wd, r, s, stride, pad, dil = case
    torch.manual_seed(3)
    x = torch.randn(n, kg * g, h, wd, dtype=torch.float64, requires_grad=True)
    w = torch.randn(kg * g, kg, r, s, dtype=torch.float64)
    y = ref_conv(x, w, None, stride, pad, dil, g)
    gy = torch.randn_like(y)
    (ref,) = torch.autograd.grad(y, x, gy)
    gy32 = gy.float()
    if layout == "nhwc":
        gy32 = gy32.contiguous(memory_format=torch.channels_last)
    with isa_path(isa):
        fastconv._C.set_debug_poison(True)
        try:
            gx = ops.direct_conv2d_grad_input(gy32, w.float(), list(x.shape), list(stride),
                                              list(pad), list(dil), g)
        finally:
            fastconv._C.set_debug_poison(False)
    torch.testing.assert_close(gx.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", GROUPS_CASES, ids=[f"kg{c[1]}g{c[2]}_{i}" for i, c in enumerate(GROUPS_CASES)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_groups_grad_weight(case, layout, isa):
    """grad_weight (grouped layers take the blocked AVX-512 correlation over the packed input
    and grad_output on AVX-512) against float64 autograd through F.conv2d, poisoned output."""
    n, kg, g, h, wd, r, s, stride, pad, dil = case
    torch.manual_seed(4)
    x = torch.randn(n, kg * g, h, wd, dtype=torch.float64)
    w = torch.randn(kg * g, kg, r, s, dtype=torch.float64, requires_grad=True)
    y = ref_conv(x, w, None, stride, pad, dil, g)
    gy = torch.randn_like(y)
    (ref,) = torch.autograd.grad(y, w, gy)
    x32, gy32 = x.float(), gy.float()
    if layout == "nhwc":
        x32 = x32.contiguous(memory_format=torch.channels_last)
        gy32 = gy32.contiguous(memory_format=torch.channels_last)
    with isa_path(isa):
        fastconv._C.set_debug_poison(True)
        try:
            gw = ops.direct_conv2d_grad_weight(gy32, x32, list(w.shape), list(stride), list(pad),
                                               list(dil), g)
        finally:
            fastconv._C.set_debug_poison(False)
    pixels = y.shape[0] * y.shape[2] * y.shape[3]
    torch.testing.assert_close(gw.double(), ref, rtol=1e-4, atol=1e-4 * pixels ** 0.5)
