"""algo='depthwise' (csrc/depthwise.cpp): forward, grad_input and grad_weight against
torch.nn.functional.conv2d, over kernel sizes, strides, dilations, padding, channel
multipliers, layouts, dtypes and both code paths (AVX2 and the portable one)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv._ops import apply_activation

from helpers import isa_path


# (N, C, H, W, M, (R, S), stride, padding, dilation); padding is an int/pair or 'same'.
GEOMETRIES = {
    "k1": (2, 8, 9, 11, 1, (1, 1), 1, 0, 1),
    "k3": (2, 16, 12, 13, 1, (3, 3), 1, 1, 1),
    "k3_s2_tail": (2, 19, 13, 15, 1, (3, 3), 2, 1, 1),
    "k3_wide": (1, 24, 6, 70, 1, (3, 3), 1, 1, 1),
    "k3_many_channels": (1, 70, 8, 9, 1, (3, 3), 1, 1, 1),
    "k5_d2": (1, 24, 14, 17, 1, (5, 5), 1, 4, 2),
    "k5_tall": (1, 4, 40, 37, 1, (5, 5), 1, 2, 1),
    "k7": (2, 12, 16, 20, 1, (7, 7), 1, 3, 1),
    # Sliding-window tiles (chan_slide_avx512): stride 2 on 7x7 and 5x5, rows
    # narrower than half a tile, channel counts that end in a partial vector.
    "k7_s2": (2, 37, 15, 17, 1, (7, 7), 2, 3, 1),
    "k5_s2": (1, 21, 12, 19, 1, (5, 5), 2, 2, 1),
    "k3_narrow": (2, 50, 6, 3, 1, (3, 3), 1, 1, 1),
    "k7_narrow_nopad": (1, 33, 9, 8, 1, (7, 7), 1, 0, 1),
    "k13_s2": (1, 9, 20, 23, 1, (13, 13), 2, 6, 1),
    # NCHW on row vectors (nchw_slide_tile_avx512, outputs >= 14 x stride wide):
    # stride 2, rows in 1-4 vectors with a partial last one, a chunk of 4 vectors
    # plus more, row counts off the register tile, dilated columns, a channel
    # multiplier, a row stride but no column stride.
    "k7_s2_wide": (1, 5, 37, 61, 1, (7, 7), 2, 3, 1),
    "k3_s2_wide": (2, 6, 33, 59, 1, (3, 3), 2, 1, 1),
    "k5_wide_m2": (1, 3, 19, 35, 2, (5, 5), 1, 2, 1),
    "k3_nopad_wide": (1, 4, 9, 80, 1, (3, 3), 1, 0, 1),
    "k7_dilw_wide": (1, 4, 13, 40, 1, (7, 7), 1, (3, 6), (1, 2)),
    "k3_s2_rect_wide": (1, 3, 11, 57, 1, (3, 5), (2, 1), (1, 2), 1),
    "k31": (1, 5, 33, 35, 1, (31, 31), 1, 15, 1),
    "m2": (2, 6, 10, 11, 2, (3, 3), 1, 1, 1),
    "m3_s2": (2, 5, 11, 12, 3, (3, 3), 2, 1, 1),
    "m3_k5_same": (1, 7, 9, 10, 3, (5, 5), 1, "same", 1),
    "rect_asym": (2, 10, 11, 14, 1, (3, 5), (2, 1), (1, 3), (1, 2)),
    "even_same": (2, 9, 10, 12, 1, (4, 4), 1, "same", 1),
    "even_same_d2": (1, 11, 12, 13, 1, (2, 6), 1, "same", 2),
    "s3_d2": (1, 10, 14, 16, 1, (3, 3), 3, 1, 2),
    "s4_gaps": (2, 8, 13, 15, 1, (2, 2), 4, 0, 1),
    "pad_gt_kernel": (1, 8, 6, 7, 1, (3, 3), 1, 4, 1),
}

# (dtype, path): float32 runs each SIMD path the CPU has, or the forced-portable one.
PATHS = [(torch.float32, "avx512"), (torch.float32, "avx2"), (torch.float32, "portable"),
         (torch.float64, "portable")]
code_path = isa_path


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)


def make(n, c, h, w, m, ks, dtype, layout, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    wt = torch.randn(c * m, 1, *ks, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(c * m, generator=g, dtype=torch.float64).to(dtype) if bias else None
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, wt, b


def check_against_torch(x, wt, b, stride, padding, dilation, activation=None, grads=True):
    """Forward (and both gradients, plus bias) of algo='depthwise' against F.conv2d
    evaluated in float64 on the same values."""
    dtype, groups = x.dtype, x.shape[1]
    leaves = [t.detach().clone().requires_grad_(grads) for t in (x, wt)]
    leaves.append(None if b is None else b.detach().clone().requires_grad_(grads))
    ref_leaves = [None if t is None else t.detach().double().requires_grad_(grads) for t in leaves]
    out = fastconv.conv2d(leaves[0], leaves[1], leaves[2], stride, padding, dilation, groups,
                          algo="depthwise", activation=activation)
    ref = F.conv2d(ref_leaves[0], ref_leaves[1], ref_leaves[2], stride, padding, dilation, groups)
    ref = apply_activation(ref, activation or "none")
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out, ref.to(dtype), **tol(dtype))
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last)
    if not grads:
        return
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = g.to(dtype).contiguous(memory_format=torch.channels_last
                               if out.is_contiguous(memory_format=torch.channels_last)
                               and not out.is_contiguous() else torch.contiguous_format)
    out.backward(g)
    ref.backward(g.double())
    for got, want in zip(leaves, ref_leaves):
        if got is None:
            continue
        scale = want.grad.abs().max().item() + 1.0
        torch.testing.assert_close(got.grad, want.grad.to(dtype), rtol=tol(dtype)["rtol"],
                                   atol=tol(dtype)["atol"] * scale)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype,path", PATHS, ids=["f32-avx512", "f32-avx2", "f32-portable", "f64"])
@pytest.mark.parametrize("geom", list(GEOMETRIES), ids=list(GEOMETRIES))
def test_forward_and_grads(geom, dtype, path, layout):
    n, c, h, w, m, ks, stride, padding, dilation = GEOMETRIES[geom]
    x, wt, _ = make(n, c, h, w, m, ks, dtype, layout)
    with code_path(path):
        check_against_torch(x, wt, None, stride, padding, dilation)


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "silu", "gelu"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype,path", PATHS, ids=["f32-avx512", "f32-avx2", "f32-portable", "f64"])
def test_bias_activation(activation, dtype, path, layout):
    x, wt, b = make(2, 20, 9, 11, 1, (3, 3), dtype, layout, bias=True, seed=3)
    x = x * 3  # so relu6 clips at both ends
    with code_path(path):
        check_against_torch(x, wt, b, 1, 1, 1, activation=activation)
        x2, wt2, b2 = make(1, 5, 8, 9, 2, (5, 5), dtype, layout, bias=True, seed=4)
        check_against_torch(x2, wt2, b2, 2, 2, 1, activation=activation, grads=False)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype,path", PATHS, ids=["f32-avx512", "f32-avx2", "f32-portable", "f64"])
def test_batch_zero(dtype, path, layout):
    x, wt, b = make(0, 6, 7, 8, 2, (3, 3), dtype, layout, bias=True)
    with code_path(path):
        x.requires_grad_(True)
        wt.requires_grad_(True)
        out = fastconv.conv2d(x, wt, b, 1, 1, 1, 6, algo="depthwise")
        assert out.shape == (0, 12, 7, 8)
        out.sum().backward()
        assert x.grad.shape == x.shape
        assert torch.equal(wt.grad, torch.zeros_like(wt))


@pytest.mark.parametrize("dtype,path", PATHS, ids=["f32-avx512", "f32-avx2", "f32-portable", "f64"])
def test_non_contiguous(dtype, path):
    x, wt, b = make(2, 8, 21, 19, 2, (3, 3), dtype, "nchw", bias=True)
    xs = x[:, :, ::2, 1:]  # strided view, neither NCHW- nor NHWC-contiguous
    xp = x.permute(0, 1, 3, 2)  # transposed spatial dims
    wt_nc = torch.cat([wt, wt], dim=3)[..., ::2]  # non-contiguous weight
    assert not xs.is_contiguous() and not xp.is_contiguous() and not wt_nc.is_contiguous()
    with code_path(path):
        check_against_torch(xs, wt, b, 2, 1, 1)
        check_against_torch(xp, wt_nc, None, 1, (2, 1), (2, 1))


def test_naive_loop_nest_matches_torch():
    """The plain reference loop nest kept beside the tuned kernels."""
    for geom in ("k3_s2_tail", "rect_asym", "m3_s2", "pad_gt_kernel"):
        n, c, h, w, m, ks, stride, padding, dilation = GEOMETRIES[geom]
        x, wt, b = make(n, c, h, w, m, ks, torch.float64, "nchw", bias=True)
        _, _, spec = fastconv.conv_spec(x, wt, b, stride, padding, dilation, c)
        for act in ("none", "relu6"):
            out = torch.ops.fastconv.depthwise_naive_conv2d(
                x, wt, b, list(spec.stride), list(spec.padding), list(spec.dilation), c, act)
            ref = apply_activation(F.conv2d(x, wt, b, stride, padding, dilation, c), act)
            torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
            tuned = torch.ops.fastconv.depthwise_conv2d(
                x, wt, b, list(spec.stride), list(spec.padding), list(spec.dilation), c, act)
            torch.testing.assert_close(tuned, out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_same_result_for_1_and_2_threads(layout):
    """Forward and both gradients (grad_weight is a split reduction) are bitwise the
    same whatever the thread count."""
    x, wt, _ = make(3, 24, 30, 31, 1, (5, 5), torch.float32, layout, seed=7)
    spec = fastconv.conv_spec(x, wt, None, 1, 2, 1, 24)[2]
    args = (list(spec.stride), list(spec.padding), list(spec.dilation), 24)
    ops = torch.ops.fastconv
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = ops.depthwise_conv2d(x, wt, None, *args)
            gi = ops.depthwise_conv2d_grad_input(y, wt, list(x.shape), *args)
            gw = ops.depthwise_conv2d_grad_weight(y, x, list(wt.shape), *args)
            results.append((y, gi, gw))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_dense_conv_rejected_with_reason():
    x = torch.randn(1, 8, 6, 6)
    w = torch.randn(16, 4, 3, 3)
    with pytest.raises(ValueError, match="groups == in_channels"):
        fastconv.conv2d(x, w, groups=2, algo="depthwise")
    with pytest.raises(ValueError, match="groups == in_channels"):
        fastconv.conv2d(x, torch.randn(8, 8, 3, 3), algo="depthwise")
    # The op itself refuses too (people call torch.ops directly).
    with pytest.raises(RuntimeError, match="needs a depthwise convolution"):
        torch.ops.fastconv.depthwise_conv2d(x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], 2)


def test_auto_picks_depthwise():
    x, wt, _ = make(1, 8, 6, 6, 1, (3, 3), torch.float32, "nchw")
    _, _, spec = fastconv.conv_spec(x, wt, None, 1, 1, 1, 8)
    assert fastconv.select(spec).name == "depthwise"


def test_blocking_exported():
    b = fastconv._C.blocking()
    for key in ("depthwise_vec_width", "depthwise_nhwc_pixel_tile", "depthwise_nhwc_chan_vecs",
                "depthwise_nchw_width_vecs", "depthwise_row_tile"):
        assert b[key] > 0


def test_opcheck():
    x, wt, b = make(2, 4, 7, 8, 2, (3, 3), torch.float64, "nhwc", bias=True)
    args = ([1, 2], [1, 1, 1, 1], [1, 1], 4, "relu")
    torch.library.opcheck(torch.ops.fastconv.depthwise_conv2d, (x, wt, b, *args))
    torch.library.opcheck(torch.ops.fastconv.depthwise_naive_conv2d, (x, wt, b, *args))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("path", ["avx512", "avx2"])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_nan_propagates_through_relu(activation, path, layout):
    """A NaN input reaches the output through the fused ReLU/ReLU6, as torch.relu
    does (MAXPS returns its second operand on NaN: the kernels write max(0, v))."""
    x, wt, b = make(1, 48, 9, 21, 1, (3, 3), torch.float32, layout, bias=True, seed=5)
    x[0, 3, 4, 7] = float("nan")
    with code_path(path):
        out = fastconv.conv2d(x, wt, b, 1, 1, 1, 48, algo="depthwise", activation=activation)
    ref = apply_activation(F.conv2d(x, wt, b, 1, 1, 1, 48), activation)
    assert torch.equal(out.isnan(), ref.isnan())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("geom", ["k3_s2_tail", "k7", "k7_s2", "k3_wide", "rect_asym", "m2", "k7_s2_wide"])
def test_avx512_matches_avx2(geom, layout):
    """The AVX-512 and AVX2 paths sum each output in the same (r, s) order, but
    the NCHW AVX-512 path adds padding zeros instead of skipping taps, and the
    gradient paths reduce in other orders: float tolerance, float64 reference."""
    n, c, h, w, m, ks, stride, padding, dilation = GEOMETRIES[geom]
    x, wt, _ = make(n, c, h, w, m, ks, torch.float32, layout, seed=11)
    spec = fastconv.conv_spec(x, wt, None, stride, padding, dilation, c)[2]
    args = (list(spec.stride), list(spec.padding), list(spec.dilation), c)
    ops = torch.ops.fastconv
    res = {}
    for path in ("avx512", "avx2"):
        with code_path(path):
            y = ops.depthwise_conv2d(x, wt, None, *args)
            gi = ops.depthwise_conv2d_grad_input(y, wt, list(x.shape), *args)
            gw = ops.depthwise_conv2d_grad_weight(y, x, list(wt.shape), *args)
            res[path] = (y, gi, gw)
    for a, b in zip(res["avx512"], res["avx2"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * (b.abs().max().item() + 1))


@pytest.mark.parametrize("activation", [None, "relu6", "silu"])
def test_large_nhwc_output(activation):
    """NHWC outputs over blocking's depthwise_avx512_stream_min_bytes are written with
    non-temporal stores (whole vectors) beside masked ones (the channel tail)."""
    limit = fastconv._C.blocking()["depthwise_avx512_stream_min_bytes"]
    for c in (32, 40):  # 40: a partial last vector, so no streaming (K % 16 != 0)
        h = int((limit / (4 * 2 * c)) ** 0.5) + 2
        x, wt, b = make(2, c, h, h, 1, (3, 3), torch.float32, "nhwc", bias=True, seed=3)
        assert 4 * x.numel() >= limit
        check_against_torch(x, wt, b, 1, 1, 1, activation=activation, grads=False)
