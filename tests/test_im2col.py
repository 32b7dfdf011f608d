"""algo='im2col': forward, grad_input and grad_weight against F.conv2d, over the
configuration space (stride, asymmetric padding, dilation, groups, non-square
kernels, layouts, dtypes, bias, activations, empty batch), plus the workspace
bound, thread-count determinism, and the plain loop nest kept beside the kernel."""
import math

import pytest
import torch
import torch.nn.functional as F

from torch._prims_common import suggest_memory_format

import fastconv
from fastconv import _C

ops = torch.ops.fastconv
CL = torch.channels_last
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
ACTS = ("none", "relu", "relu6", "silu", "gelu")


def case(n, c, h, w, k, r, s, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1,
         bias=True, act="none", id=None):
    return pytest.param(dict(n=n, c=c, h=h, w=w, k=k, r=r, s=s, stride=stride, padding=padding,
                             dilation=dilation, groups=groups, bias=bias, act=act), id=id)


CASES = [
    case(2, 4, 9, 8, 6, 3, 3, padding=(1, 1, 1, 1), id="3x3-pad1"),
    case(2, 3, 11, 10, 5, 3, 3, stride=(2, 2), padding=(0, 1, 1, 0), bias=False, act="relu",
         id="3x3-s2-asympad"),
    case(1, 4, 10, 13, 3, 2, 3, stride=(1, 2), padding=(1, 2, 0, 3), dilation=(2, 2), act="silu",
         id="2x3-dil2-s12-asympad"),
    case(2, 6, 7, 7, 4, 3, 3, padding=(1, 1, 1, 1), groups=2, act="relu6", id="groups2"),
    case(2, 6, 12, 9, 9, 3, 1, stride=(2, 1), padding=(2, 0, 1, 1), dilation=(2, 1), groups=3,
         bias=False, act="gelu", id="3x1-groups3-dil21"),
    case(3, 8, 5, 6, 5, 1, 1, id="1x1"),
    case(2, 8, 4, 5, 6, 1, 1, groups=2, bias=False, act="relu", id="1x1-groups2"),
    case(2, 6, 9, 9, 4, 1, 1, stride=(2, 2), id="1x1-s2"),
    case(2, 6, 9, 9, 4, 1, 1, padding=(1, 0, 0, 1), act="relu", id="1x1-pad"),
    case(2, 3, 3, 4, 4, 5, 5, padding=(4, 3, 2, 4), act="silu", id="5x5-bigpad"),
    case(2, 5, 3, 3, 1, 3, 3, bias=False, id="one-pixel-one-channel"),
    # C·R·S·P > kIm2colMaxWorkspaceBytes: several tiles, and tiles that span images.
    case(3, 192, 14, 14, 8, 3, 3, padding=(1, 1, 1, 1), id="multi-tile"),
    # Few dW blocks: grad_weight cuts each tile's pixels into parts (kIm2colGradWeightMinItems),
    # parts that span images; one tile (1x1, 3 parts) and three tiles (3 parts each).
    case(2, 16, 15, 15, 12, 1, 1, id="1x1-parts"),
    case(2, 64, 24, 24, 8, 3, 3, padding=(1, 1, 1, 1), id="multi-tile-parts"),
]

LAYOUTS = ("nchw", "nhwc", "x_nchw_w_cl", "x_cl_w_nchw")


def make(cfg, layout, dtype, n=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = cfg["n"] if n is None else n
    x = torch.randn(n, cfg["c"], cfg["h"], cfg["w"], dtype=dtype, generator=g)
    w = torch.randn(cfg["k"], cfg["c"] // cfg["groups"], cfg["r"], cfg["s"], dtype=dtype, generator=g)
    b = torch.randn(cfg["k"], dtype=dtype, generator=g) if cfg["bias"] else None
    if layout in ("nhwc", "x_cl_w_nchw"):
        x = x.contiguous(memory_format=CL)
    if layout in ("nhwc", "x_nchw_w_cl"):
        w = w.contiguous(memory_format=CL)
    return x, w, b


def args(cfg):
    return list(cfg["stride"]), list(cfg["padding"]), list(cfg["dilation"]), cfg["groups"]


def reference(x, w, b, cfg, act="none"):
    """F.conv2d in float64 (asymmetric padding through F.pad)."""
    t, bo, l, r = cfg["padding"]
    xd = F.pad(x.double(), (l, r, t, bo))
    y = F.conv2d(xd, w.double(), None if b is None else b.double(), cfg["stride"], 0,
                 cfg["dilation"], cfg["groups"])
    return fastconv._ops.apply_activation(y, act)


def reference_grads(x, w, dy, cfg):
    xd = x.detach().double().requires_grad_()
    wd = w.detach().double().requires_grad_()
    y = reference(xd, wd, None, cfg)
    return torch.autograd.grad(y, (xd, wd), dy.double())


def assert_rel(got, want, dtype, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}"
    assert not torch.isnan(got).any(), f"{what}: NaN (unwritten output)"
    scale = want.abs().max().item() if want.numel() else 1.0
    err = (got.double() - want).abs().max().item() if want.numel() else 0.0
    assert err <= TOL[dtype] * max(scale, 1.0), f"{what}: max error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", CASES)
def test_forward_and_grads(cfg, layout, dtype):
    x, w, b = make(cfg, layout, dtype)
    stride, padding, dilation, groups = args(cfg)
    want = reference(x, w, b, cfg, cfg["act"])
    y = ops.im2col_conv2d(x, w, b, stride, padding, dilation, groups, cfg["act"])
    assert_rel(y, want, dtype, "forward")
    # PyTorch's rule: channels_last iff input or weight suggests it (a 1x1 weight is ambiguous).
    fmt = fastconv._ops.output_memory_format(x, w)
    assert y.is_contiguous(memory_format=fmt)

    dy = torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    dy = dy.contiguous(memory_format=fmt)
    gx_want, gw_want = reference_grads(x, w, dy, cfg)
    gx = ops.im2col_conv2d_grad_input(dy, w, list(x.shape), stride, padding, dilation, groups)
    gw = ops.im2col_conv2d_grad_weight(dy, x, list(w.shape), stride, padding, dilation, groups)
    assert_rel(gx, gx_want, dtype, "grad_input")
    assert_rel(gw, gw_want, dtype, "grad_weight")
    # grad_input follows grad_output's layout (as the reference does).
    assert gx.is_contiguous(memory_format=suggest_memory_format(dy))
    assert gw.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("cfg", CASES)
def test_naive_loop_nest(cfg, layout, dtype):
    """The untuned im2col + triple-loop GEMM kept beside the kernel is right too."""
    x, w, b = make(cfg, layout, dtype)
    y = ops.im2col_naive_conv2d(x, w, b, *args(cfg), cfg["act"])
    assert_rel(y, reference(x, w, b, cfg, cfg["act"]), dtype, "naive forward")


@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fused_epilogue(act, bias, layout):
    cfg = dict(n=2, c=4, h=6, w=7, k=5, r=3, s=3, stride=(1, 1), padding=(1, 1, 1, 1),
               dilation=(1, 1), groups=1, bias=bias, act=act)
    x, w, b = make(cfg, layout, torch.float64)
    y = ops.im2col_conv2d(x, w, b, *args(cfg), act)
    assert_rel(y, reference(x, w, b, cfg, act), torch.float64, f"{act} forward")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pointwise", [False, True], ids=["3x3", "1x1"])
def test_empty_batch(layout, pointwise):
    k = 1 if pointwise else 3
    cfg = dict(n=0, c=4, h=5, w=5, k=6, r=k, s=k, stride=(1, 1), padding=(0, 0, 0, 0),
               dilation=(1, 1), groups=2, bias=True, act="relu")
    x, w, b = make(cfg, layout, torch.float32)
    y = ops.im2col_conv2d(x, w, b, *args(cfg), "relu")
    assert y.shape == reference(x, w, b, cfg).shape
    dy = torch.randn(y.shape)
    gx = ops.im2col_conv2d_grad_input(dy, w, list(x.shape), *args(cfg))
    gw = ops.im2col_conv2d_grad_weight(dy, x, list(w.shape), *args(cfg))
    assert gx.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(w))  # no pixel contributes


NONCONTIG = {
    "h-step2": lambda t: t[:, :, ::2],
    "w-step2": lambda t: t[..., ::2],
    "transposed-hw": lambda t: t.transpose(2, 3),
    "channel-slice": lambda t: t[:, 1:],
}


@pytest.mark.parametrize("view", NONCONTIG)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw-base", "cl-base"])
def test_noncontiguous_inputs(view, k, cl):
    dtype = torch.float64
    base = torch.randn(2, 5, 10, 12, dtype=dtype)
    if cl:
        base = base.contiguous(memory_format=CL)
    x = NONCONTIG[view](base)
    cfg = dict(n=2, c=x.shape[1], h=x.shape[2], w=x.shape[3], k=3, r=k, s=k, stride=(1, 1),
               padding=(0, 0, 0, 0) if k == 1 else (1, 1, 0, 2), dilation=(1, 1), groups=1,
               bias=True, act="none")
    w = torch.randn(3, x.shape[1], k, k, dtype=dtype)
    b = torch.randn(3, dtype=dtype)
    y = ops.im2col_conv2d(x, w, b, *args(cfg), "none")
    assert_rel(y, reference(x, w, b, cfg), dtype, "forward")
    # grad_output as autograd hands it over from y.sum(): an expanded, stride-0 tensor.
    dy = torch.ones(()).to(dtype).expand(y.shape)
    gx_want, gw_want = reference_grads(x, w, dy, cfg)
    gx = ops.im2col_conv2d_grad_input(dy, w, list(x.shape), *args(cfg))
    gw = ops.im2col_conv2d_grad_weight(dy, x, list(w.shape), *args(cfg))
    assert_rel(gx, gx_want, dtype, "grad_input")
    assert_rel(gw, gw_want, dtype, "grad_weight")


def test_autograd_through_functional():
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    f = lambda x, w, b: fastconv.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2, algo="im2col",
                                        activation="silu")
    assert torch.autograd.gradcheck(f, (x, w, b))


# --- workspace ----------------------------------------------------------------

def predicted_workspace(c, r, s, ho, wo, n, elem, pointwise=False):
    """The documented tiling rule, from the constants in fastconv._C.blocking()."""
    blk = _C.blocking()
    total = n * ho * wo
    if pointwise or total == 0:
        return 0
    rows = c * r * s
    tile = max(blk["im2col_min_tile_pixels"], blk["im2col_max_workspace_bytes"] // (rows * elem))
    tile = min(tile, total)
    tile = math.ceil(total / math.ceil(total / tile))  # equal tiles
    return rows * tile * elem


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_workspace_bounded_by_tiling(dtype):
    elem = torch.empty((), dtype=dtype).element_size()
    blk = _C.blocking()
    sizes = []
    for n in (1, 8, 64, 512):
        ws = fastconv.im2col_workspace_bytes((n, 64, 56, 56), (64, 64, 3, 3), padding=1, dtype=dtype)
        assert ws == predicted_workspace(64, 3, 3, 56, 56, n, elem)
        sizes.append(ws)
    # Flat in the batch: never above the cap, and tiles stay big (equal tiles
    # trim at most half a tile).
    cap = blk["im2col_max_workspace_bytes"]
    assert all(cap // 2 <= ws <= cap for ws in sizes[1:]), sizes
    # Very deep reductions keep the minimum tile (a bounded overshoot).
    deep = fastconv.im2col_workspace_bytes((4, 4096, 16, 16), (8, 4096, 3, 3), padding=1, dtype=dtype)
    assert deep == 4096 * 9 * blk["im2col_min_tile_pixels"] * elem
    # The 1x1/stride-1/unpadded path multiplies the input directly: no workspace.
    assert fastconv.im2col_workspace_bytes((64, 256, 56, 56), (64, 256, 1, 1), dtype=dtype) == 0
    assert fastconv.im2col_workspace_bytes((0, 8, 5, 5), (4, 8, 3, 3), dtype=dtype) == 0


WS_CASES = [
    dict(n=3, c=192, h=14, w=14, k=8, r=3, s=3, padding=(1, 1, 1, 1), groups=1),  # several tiles
    dict(n=2, c=6, h=9, w=8, k=4, r=2, s=3, padding=(0, 1, 2, 0), groups=2),
    dict(n=2, c=8, h=5, w=5, k=4, r=1, s=1, padding=(0, 0, 0, 0), groups=1),  # pointwise: 0
]


@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("cfg", WS_CASES)
def test_workspace_matches_allocation(cfg, layout):
    """What each op allocates is exactly fastconv.im2col_workspace_bytes."""
    dtype = torch.float64
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"], dtype=dtype)
    w = torch.randn(cfg["k"], cfg["c"] // cfg["groups"], cfg["r"], cfg["s"], dtype=dtype)
    if layout == "nhwc":
        x, w = x.contiguous(memory_format=CL), w.contiguous(memory_format=CL)
    t, b, l, r = cfg["padding"]
    stride, padding, dilation = [1, 1], list(cfg["padding"]), [1, 1]
    expected = _C.im2col_workspace_bytes(list(x.shape), list(w.shape), stride, padding, dilation,
                                         cfg["groups"], x.element_size())
    ho, wo = cfg["h"] + t + b - cfg["r"] + 1, cfg["w"] + l + r - cfg["s"] + 1
    pointwise = cfg["r"] == cfg["s"] == 1 and not any(cfg["padding"])
    assert expected == predicted_workspace(cfg["c"], cfg["r"], cfg["s"], ho, wo, cfg["n"], 8, pointwise)
    y = ops.im2col_conv2d(x, w, None, stride, padding, dilation, cfg["groups"])
    assert _C.im2col_last_workspace_bytes() == expected
    ops.im2col_conv2d_grad_input(y, w, list(x.shape), stride, padding, dilation, cfg["groups"])
    assert _C.im2col_last_workspace_bytes() == expected
    ops.im2col_conv2d_grad_weight(y, x, list(w.shape), stride, padding, dilation, cfg["groups"])
    assert _C.im2col_last_workspace_bytes() == expected


# --- threads, and what must never run -------------------------------------------

THREAD_CASES = [CASES[0], CASES[4], CASES[5], CASES[-3], CASES[-2], CASES[-1]]


@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("cfg", THREAD_CASES)
def test_one_and_two_threads_identical(cfg, layout):
    x, w, b = make(cfg, layout, torch.float32)
    a = args(cfg)
    dy = torch.randn(reference(x, w, b, cfg).shape)
    if layout == "nhwc":
        dy = dy.contiguous(memory_format=CL)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((ops.im2col_conv2d(x, w, b, *a, cfg["act"]),
                            ops.im2col_conv2d_grad_input(dy, w, list(x.shape), *a),
                            ops.im2col_conv2d_grad_weight(dy, x, list(w.shape), *a)))
    finally:
        torch.set_num_threads(before)
    for one, two, what in zip(*results, ("forward", "grad_input", "grad_weight")):
        assert torch.equal(one, two), f"{what} differs between 1 and 2 threads"


@pytest.mark.parametrize("layout", ("nchw", "nhwc"))
@pytest.mark.parametrize("k", [1, 3])
def test_no_aten_convolution_reached(layout, k):
    """No ATen/oneDNN convolution runs underneath: the GEMMs call BLAS (sgemm_/dgemm_) directly."""
    cfg = dict(n=2, c=8, h=8, w=8, k=8, r=k, s=k, stride=(1, 1), padding=(0, 0, 0, 0),
               dilation=(1, 1), groups=1, bias=True, act="relu")
    x, w, b = make(cfg, layout, torch.float32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = ops.im2col_conv2d(x, w, b, *args(cfg), "relu")
        ops.im2col_conv2d_grad_input(y, w, list(x.shape), *args(cfg))
        ops.im2col_conv2d_grad_weight(y, x, list(w.shape), *args(cfg))
    names = {e.name for e in prof.events()}
    banned = ("conv", "mkldnn", "onednn", "im2col", "col2im", "unfold", "fold", "nnpack")
    bad = [n for n in names if not n.startswith("fastconv::") and any(s in n.lower() for s in banned)]
    assert not bad, f"ATen convolution reached: {bad}"


def test_bad_inputs_raise():
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.im2col_conv2d(x, w.double(), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="groups"):
        ops.im2col_conv2d(x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], 3)
    with pytest.raises(RuntimeError, match="activation"):
        ops.im2col_conv2d(x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, "tanh")
    with pytest.raises(RuntimeError, match="grad_output"):
        ops.im2col_conv2d_grad_input(torch.randn(1, 2, 4, 4), w, [1, 4, 5, 5], [1, 1], [0, 0, 0, 0],
                                     [1, 1], 1)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        ops.im2col_naive_conv2d(torch.randn(1, 4, 2, 2), w, None, [1, 1], [0, 0, 0, 0], [1, 1], 1)
