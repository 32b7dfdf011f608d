"""The Triton kernels (algo="triton_igemm", "triton_depthwise") against F.conv2d.

Runs on CUDA, or on the CPU under Triton's interpreter. Triton reads TRITON_INTERPRET
when a kernel is decorated, so the interpreter must be on before anything imports
triton: CI runs this module in its own process,

    TRITON_INTERPRET=1 python -m pytest -q tests/test_triton.py

Shapes are tiny because the interpreter executes every program in Python.
The full-size matrix (real layer shapes, every dtype/layout) is in test_triton_gpu.py.
"""
import contextlib
import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F

import fastconv

triton = pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if not (CUDA or INTERPRET):
    pytest.skip("Triton kernels need a CUDA device or the interpreter: run "
                "`TRITON_INTERPRET=1 python -m pytest tests/test_triton.py` in its own process",
                allow_module_level=True)
DEVICE = "cuda" if CUDA else "cpu"

# ||out - ref|| / ||ref|| bounds (reference: float64 on the same, already-rounded inputs).
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
TF32_TOL = 3e-3
ACTIVATIONS = ("none", "relu", "relu6", "silu", "gelu")


def rel_err(out, ref):
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert not torch.isnan(out).any(), "NaN in output: an element was not written"
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def layout(t, cl):
    return t.contiguous(memory_format=torch.channels_last) if cl else t.contiguous()


def make(xs, ws, dtype, cl, bias=True, requires_grad=False):
    x = layout(torch.randn(xs, dtype=torch.float64).to(dtype), cl).to(DEVICE)
    w = layout((torch.randn(ws, dtype=torch.float64) / (ws[1] * ws[2] * ws[3]) ** 0.5).to(dtype),
               cl).to(DEVICE)
    b = torch.randn(ws[0], dtype=torch.float64).to(dtype).to(DEVICE) if bias else None
    for t in (x, w, b):
        if t is not None:
            t.requires_grad_(requires_grad)
    return x, w, b


def ref_conv(x, w, b, stride, padding, dilation, groups, activation=None):
    y = F.conv2d(x.detach().double().cpu(), w.detach().double().cpu(),
                 None if b is None else b.detach().double().cpu(), stride, padding, dilation, groups)
    return fastconv._ops.apply_activation(y, activation or "none")


@pytest.fixture(autouse=True)
def ieee_fp32():
    """fp32 tests below are IEEE unless a test turns TF32 on."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


# (N, C, H, W), (K, C/g, R, S), stride, padding, dilation, groups
IGEMM_CASES = {
    "dense3x3": ((2, 8, 9, 10), (16, 8, 3, 3), 1, 1, 1, 1),
    "strided_nonsquare": ((1, 6, 11, 9), (8, 6, 3, 2), (2, 1), (1, 0), 1, 1),
    "dilated": ((1, 4, 12, 12), (8, 4, 3, 3), 1, 2, 2, 1),
    "same_even_kernel": ((1, 5, 7, 8), (6, 5, 4, 4), 1, "same", 1, 1),
    "grouped_cg2": ((1, 8, 8, 8), (8, 2, 3, 3), 1, 1, 1, 4),
    "grouped_blocked": ((1, 64, 6, 6), (32, 32, 3, 3), (2, 2), 1, 1, 2),
    "depthwise_shape": ((1, 8, 6, 6), (16, 1, 3, 3), 1, 1, 1, 8),
    "plain1x1": ((2, 32, 5, 7), (24, 32, 1, 1), 1, 0, 1, 1),
    "1x1_strided": ((1, 16, 7, 7), (16, 16, 1, 1), 2, 0, 1, 1),
    # grad_input's channel-blocked loops (interpreter BLOCK_K=32): flat for Kg <= 64,
    # taps-outer above
    "out32": ((1, 8, 5, 5), (32, 8, 3, 3), 1, 1, 1, 1),
    "out96": ((1, 8, 5, 4), (96, 8, 3, 3), 2, 1, 1, 1),
}


def _check_forward(algo, case, dtype, cl, activation=None, tol=None):
    xs, ws, st, pad, dil, g = case
    x, w, b = make(xs, ws, dtype, cl)
    out = fastconv.conv2d(x, w, b, st, pad, dil, g, algo=algo, activation=activation)
    assert out.dtype == dtype and out.device.type == DEVICE
    assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert rel_err(out, ref_conv(x, w, b, st, pad, dil, g, activation)) < (tol or TOL[dtype])


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", list(IGEMM_CASES))
def test_igemm_forward_fp32(name, cl):
    _check_forward("triton_igemm", IGEMM_CASES[name], torch.float32, cl)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16],
                         ids=["fp64", "fp16", "bf16"])
@pytest.mark.parametrize("name", ["dense3x3", "grouped_cg2", "plain1x1", "same_even_kernel"])
def test_igemm_forward_dtypes(name, dtype):
    _check_forward("triton_igemm", IGEMM_CASES[name], dtype, name == "plain1x1")


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
@pytest.mark.parametrize("algo,case", [
    ("triton_igemm", IGEMM_CASES["dense3x3"]),
    ("triton_depthwise", ((1, 6, 7, 9), (6, 1, 3, 3), 1, 1, 1, 6)),
], ids=["igemm", "depthwise"])
def test_epilogue(algo, case, activation):
    # ReLU6 clips at 6: scale up so that some outputs land above it.
    _check_forward(algo, case, torch.float32, False, activation)


def test_mixed_layouts_follow_pytorch_rule():
    """Output is channels_last iff input or weight is; a channels_last weight alone counts."""
    x = torch.randn(1, 8, 6, 6, device=DEVICE)
    w = layout(torch.randn(8, 8, 3, 3, device=DEVICE), True)
    out = fastconv.conv2d(x, w, padding=1, algo="triton_igemm")
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, ref_conv(x, w, None, 1, 1, 1, 1)) < TOL[torch.float32]
    out2 = fastconv.conv2d(x, w[:, :1].contiguous(), padding=1, groups=8, algo="triton_depthwise")
    assert rel_err(out2, ref_conv(x, w[:, :1], None, 1, 1, 1, 8)) < TOL[torch.float32]


# The forward's other tile kinds: NESTED (taps-outer loop) and the TMA-descriptor plain
# GEMM. The interpreter runs one fixed tile, so each test forces it.
IGEMM_KIND_CASES = {
    "blocked_grouped": IGEMM_CASES["grouped_blocked"],           # Cg=32: channel-blocked loop
    "generic": ((1, 24, 5, 5), (16, 24, 3, 3), 1, 1, 1, 1),       # Cg=24: flattened loop
    "plain_deep": ((1, 128, 3, 5), (24, 128, 1, 1), 1, 0, 1, 1),  # 1x1: plain GEMM
    "plain_short": IGEMM_CASES["plain1x1"],
    "taps": ((2, 32, 5, 6), (16, 32, 3, 3), 1, 1, 1, 1),
    "strided_1x1": ((1, 32, 7, 6), (16, 32, 1, 1), 2, 0, 1, 1),
    # 10 x 3 output tiles: GROUP_M's tile order with a partial last group (poison: no NaN)
    "many_tiles": ((1, 16, 10, 16), (48, 16, 1, 3), 1, (0, 1), 1, 1),
}
KIND_TILES = {"nested": dict(NESTED=True, BLOCK_M=16, BLOCK_N=16, BLOCK_K=16),
              "tma": dict(KIND="tma", BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)}


@pytest.fixture
def policies():
    """use(family, policy): the rest of the test plans and runs `family` under `policy`
    (fresh plans; the default policy again afterwards)."""
    with contextlib.ExitStack() as stack:
        yield lambda family, policy: stack.enter_context(family.FAMILY.using(policy))


@pytest.fixture
def igemm_tile(policies, monkeypatch):
    """force(kind): the igemm forward plans use KIND_TILES[kind]; returns a log with one
    "tma" entry per TMA-kernel launch."""
    from fastconv.kernels import igemm
    log = []

    def force(kind):
        tma_kernel = igemm._igemm_fwd_tma_kernel

        class Spy:
            def __getitem__(self, grid):
                log.append("tma")
                return tma_kernel[grid]
        monkeypatch.setattr(igemm, "_igemm_fwd_tma_kernel", Spy())
        tile = KIND_TILES[kind]
        policies(igemm, igemm.POLICY.forcing(igemm_fwd16=tile, igemm_fwd32=tile))
        return log
    yield force


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("kind", list(KIND_TILES))
@pytest.mark.parametrize("name", list(IGEMM_KIND_CASES))
def test_igemm_forward_tile_kinds(igemm_tile, kind, name, cl):
    log = igemm_tile(kind)
    _check_forward("triton_igemm", IGEMM_KIND_CASES[name], torch.float32, cl, "relu")
    # TMA runs on dense channels_last 1x1/stride-1 convs only; the others take the pointer
    # kernel with the same tile.
    assert ("tma" in log) == (kind == "tma" and cl and name.startswith("plain"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_igemm_tma_16bit_and_misaligned_view(igemm_tile, dtype):
    """16-bit TMA tiles; and a view that starts off the 16-byte grid falls back to pointers."""
    log = igemm_tile("tma")
    _check_forward("triton_igemm", IGEMM_KIND_CASES["plain_deep"], dtype, True)
    assert log == ["tma"]
    ws = (24, 128, 1, 1)
    flat = torch.randn(1 + 3 * 5 * 128, dtype=torch.float64).to(dtype).to(DEVICE)
    x = flat[1:].view(1, 3, 5, 128).permute(0, 3, 1, 2)  # channels_last, 2-byte aligned
    w = layout(torch.randn(ws, dtype=torch.float64).to(dtype), True).to(DEVICE)
    log.clear()
    out = fastconv.conv2d(x, w, algo="triton_igemm")
    assert log == [] and rel_err(out, ref_conv(x, w, None, 1, 0, 1, 1)) < TOL[dtype]


@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
def test_tf32_flag(tf32):
    """cudnn.allow_tf32 picks the dot precision. IEEE must be exact to fp32 rounding; TF32
    (10-bit mantissa operands) lands near 1e-4..1e-3 on the GPU. The interpreter computes
    dots in fp32 either way, so there only the IEEE bound and the TF32 bound are checked."""
    torch.backends.cudnn.allow_tf32 = tf32
    xs, ws = (2, 32, 8, 8), (32, 32, 3, 3)
    x, w, b = make(xs, ws, torch.float32, False)
    err = rel_err(fastconv.conv2d(x, w, b, padding=1, algo="triton_igemm"),
                  ref_conv(x, w, b, 1, 1, 1, 1))
    if tf32:
        assert err < TF32_TOL
        if CUDA:
            assert err > 1e-6, "allow_tf32=True but the result is IEEE-exact: TF32 not used"
    else:
        assert err < TOL[torch.float32]


def _check_backward(algo, case, dtype, cl, activation=None):
    xs, ws, st, pad, dil, g = case
    x, w, b = make(xs, ws, dtype, cl, requires_grad=True)
    out = fastconv.conv2d(x, w, b, st, pad, dil, g, algo=algo, activation=activation)
    grad = layout(torch.randn(out.shape, dtype=torch.float64).to(dtype), cl).to(DEVICE)
    gx, gw, gb = torch.autograd.grad(out, (x, w, b), grad)
    xr, wr, br = (t.detach().double().cpu().requires_grad_() for t in (x, w, b))
    ref = fastconv._ops.apply_activation(F.conv2d(xr, wr, br, st, pad, dil, g), activation or "none")
    rx, rw, rb = torch.autograd.grad(ref, (xr, wr, br), grad.double().cpu())
    tol = TOL[dtype] if dtype != torch.float32 else 1e-5
    assert rel_err(gx, rx) < tol
    assert rel_err(gw, rw) < tol
    assert rel_err(gb, rb) < tol


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", ["dense3x3", "strided_nonsquare", "dilated", "same_even_kernel",
                                  "grouped_cg2", "grouped_blocked", "plain1x1", "out32", "out96"])
def test_igemm_backward(name, cl):
    _check_backward("triton_igemm", IGEMM_CASES[name], torch.float32, cl)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_igemm_int64_index_paths(policies, cl):
    """NEED_I64 branches of the implicit GEMM's three kernels on small tensors (a policy with
    int64 indexing; test_triton_gpu.py has a real 2^31-element tensor)."""
    from fastconv.kernels import igemm
    policies(igemm, dataclasses.replace(igemm.POLICY, int64=True))
    _check_backward("triton_igemm", IGEMM_CASES["strided_nonsquare"], torch.float32, cl)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
def test_igemm_backward_dtypes(dtype):
    _check_backward("triton_igemm", IGEMM_CASES["strided_nonsquare"], dtype, False)


# NCHW plans: PIX_MAJOR tiles (default), the channels_last tile order on NCHW tensors, the
# per-call weight copy, and the detour through channels_last copies. Each mode must reach
# the kernels (a spy reads their arguments) and match float64 in all three directions.
NCHW_MODES = {
    "pix_major": dict(pm=True),
    "channel_order": dict(pm=False),
    "weight_copy": dict(pm=True, copy=True),
    "copy_channel_order": dict(pm=False, copy=True),
    "tap_blocked": dict(pm=False, tap=True),
    "tap_blocked_pix_major": dict(pm=True, tap=True),
    "via_channels_last": dict(pm=False, via=True),
    "via_channels_last_copy": dict(pm=False, via=True, copy=True),
}
NCHW_CASES = {name: IGEMM_CASES[name] for name in
              ("dense3x3", "strided_nonsquare", "plain1x1", "1x1_strided", "out96")}
# Cg = 32 = the interpreter's BLOCK_N: grad_weight's tap-blocked tiles
NCHW_CASES["taps32"] = ((2, 32, 5, 6), (16, 32, 3, 3), 1, 1, 1, 1)
NCHW_CASES["taps32_s2"] = ((1, 32, 7, 6), (8, 32, 3, 3), 2, 1, 1, 1)


@pytest.fixture
def nchw_mode(policies, monkeypatch):
    """set(pm, copy, via, tap, gather_min_taps, **fields) -> a log of (kernel, PIX_MAJOR,
    TAP_BLOCKED, activation, weight) per launch, under an IgemmPolicy with those choices
    for every direction and layer kind (other fields replaced by `fields`)."""
    from fastconv.kernels import igemm
    log = []

    class Spy:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def call(*args, **kw):
                log.append((self.name, kw["PIX_MAJOR"], kw.get("TAP_BLOCKED"), args[0], args[1]))
                return self.kernel[grid](*args, **kw)
            return call

    for name in ("_igemm_fwd_kernel", "_igemm_bwd_input_kernel", "_igemm_bwd_weight_kernel"):
        monkeypatch.setattr(igemm, name, Spy(name, getattr(igemm, name)))

    def set_mode(pm=True, copy=False, via=False, tap=False, gather_min_taps=0, **fields):
        policy = igemm.POLICY.every_nchw_choice(pm, copy, via, tap, gather_min_taps)
        policies(igemm, dataclasses.replace(policy, **fields))
        return log
    yield set_mode


@pytest.mark.parametrize("mode", list(NCHW_MODES))
@pytest.mark.parametrize("name", list(NCHW_CASES))
def test_igemm_nchw_modes(nchw_mode, mode, name):
    opts = NCHW_MODES[mode]
    log = nchw_mode(**opts)
    _check_forward("triton_igemm", NCHW_CASES[name], torch.float32, False)
    _check_backward("triton_igemm", NCHW_CASES[name], torch.float32, False)
    r, cg = NCHW_CASES[name][1][2], NCHW_CASES[name][1][1]
    kinds = {entry[0] for entry in log}
    assert kinds == {"_igemm_fwd_kernel", "_igemm_bwd_input_kernel", "_igemm_bwd_weight_kernel"}
    for kernel, pm, tap, act, w in log:
        cl_act = act.is_contiguous(memory_format=torch.channels_last) and act.stride(1) == 1
        assert cl_act == bool(opts.get("via")), (kernel, act.stride())
        assert pm == (opts["pm"] and not opts.get("via")), kernel
        if kernel == "_igemm_fwd_kernel" and opts.get("copy") and r > 1:
            assert w.stride(1) == 1, "forward weight not copied channels-innermost"
        if kernel == "_igemm_bwd_input_kernel" and opts.get("copy"):
            assert w.stride(0) == 1, "grad_input weight not copied k-innermost"
        if kernel == "_igemm_bwd_weight_kernel":
            assert tap == (bool(opts.get("tap")) and cg % 32 == 0), (kernel, tap)


def test_igemm_nchw_gather_forward_needs_large_kernels(nchw_mode):
    """The forward's gather choices (pixel-major tiles, weight copy) apply from
    gather_min_taps taps on (timed on a 7x7 stem only); a 3x3 conv with few channels keeps
    the channel-order tiles and its weight as given."""
    from fastconv.kernels import igemm
    log = nchw_mode(pm=True, copy=True, gather_min_taps=igemm.POLICY.gather_min_taps)
    case = ((1, 3, 9, 8), (8, 3, 3, 3), 2, 1, 1, 1)
    _check_forward("triton_igemm", case, torch.float32, False)
    fwd = [(pm, w) for kernel, pm, _, _, w in log if kernel == "_igemm_fwd_kernel"]
    assert fwd and all(not pm and w.is_contiguous() for pm, w in fwd)
    log.clear()
    _check_forward("triton_igemm", ((1, 3, 9, 8), (8, 3, 7, 7), 2, 3, 1, 1), torch.float32, False)
    fwd = [(pm, w) for kernel, pm, _, _, w in log if kernel == "_igemm_fwd_kernel"]
    assert fwd and all(pm and w.stride(1) == 1 for pm, w in fwd)


def test_igemm_nchw_detour_by_plane(nchw_mode):
    """The channels_last detour applies up to nchw_via_cl_max_plane output pixels, per
    direction; above it the NCHW kernels run (with the weight copy)."""
    case = NCHW_CASES["taps32"]  # 5x6 output plane = 30 pixels
    for limit, detour in ((30, True), (29, False)):
        log = nchw_mode(pm=False, copy=True, via=True, nchw_via_cl_max_plane={
            "fwd": limit, "grad_input": 1 << 30, "grad_weight": 0})
        log.clear()
        _check_backward("triton_igemm", case, torch.float32, False)
        acts = {name: act.stride(1) == 1 for name, _, _, act, _ in log}
        assert acts == {"_igemm_fwd_kernel": detour, "_igemm_bwd_input_kernel": True,
                        "_igemm_bwd_weight_kernel": False}, (limit, acts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_igemm_channels_last_grad_input_weight_copy(nchw_mode, dtype):
    """channels_last fp32 grad_input reads the weight k-innermost (TF32 operands K-major);
    16-bit keeps the channels_last weight (the tensor cores read it transposed)."""
    log = nchw_mode(pm=False, copy=True)
    _check_backward("triton_igemm", NCHW_CASES["taps32"], dtype, True)
    ws = [w for name, _, _, _, w in log if name == "_igemm_bwd_input_kernel"]
    assert ws and all((w.stride(0) == 1) == (dtype == torch.float32) for w in ws)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
def test_igemm_nchw_choices_are_fp32_only(nchw_mode, dtype):
    """The NCHW choices were measured in fp32 (TF32): other dtypes keep the channel-order
    tiles, the weight as given and the per-element grad_weight gather (tap-blocked tiles
    were timed in fp32 only)."""
    log = nchw_mode(pm=True, copy=True, tap=True)
    for name in ("strided_nonsquare", "taps32_s2"):
        _check_forward("triton_igemm", NCHW_CASES[name], dtype, False)
        _check_backward("triton_igemm", NCHW_CASES[name], dtype, False)
    taps = []
    for kernel, pm, tap, act, w in log:
        assert not pm and w.is_contiguous(), kernel
        if kernel == "_igemm_bwd_weight_kernel":  # (dy, x, ...): x has Cg = 32 in taps32_s2
            taps.append(tap)
    assert len(taps) == 2 and not any(taps)


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_backward_through_epilogue(activation):
    _check_backward("triton_igemm", IGEMM_CASES["dense3x3"], torch.float32, False, activation)
    _check_backward("triton_depthwise", DW_CASES["k3"], torch.float32, True, activation)


# (N, C, H, W), (C*mult, 1, R, S), stride, padding, dilation, groups=C
DW_CASES = {
    "k3": ((2, 6, 7, 9), (6, 1, 3, 3), 1, 1, 1, 6),
    "k3_s2_mult2": ((1, 4, 9, 8), (8, 1, 3, 3), 2, 1, 1, 4),
    "k5_dil2": ((1, 5, 11, 10), (5, 1, 5, 5), 1, 4, 2, 5),
    "k4_same": ((1, 3, 6, 7), (3, 1, 4, 4), 1, "same", 1, 3),
    "k7x3_s21": ((1, 4, 10, 9), (4, 1, 7, 3), (2, 1), (3, 1), 1, 4),
    "k1": ((1, 8, 5, 5), (16, 1, 1, 1), 1, 0, 1, 8),
    "k13": ((1, 4, 9, 10), (4, 1, 13, 13), 1, 6, 1, 4),
    "k31": ((1, 2, 6, 5), (2, 1, 31, 31), 1, 15, 1, 2),
}


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", list(DW_CASES))
def test_depthwise_forward_fp32(name, cl):
    _check_forward("triton_depthwise", DW_CASES[name], torch.float32, cl)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16],
                         ids=["fp64", "fp16", "bf16"])
@pytest.mark.parametrize("name", ["k3_s2_mult2", "k5_dil2"])
def test_depthwise_forward_dtypes(name, dtype):
    _check_forward("triton_depthwise", DW_CASES[name], dtype, name == "k5_dil2")


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", ["k3", "k3_s2_mult2", "k5_dil2", "k4_same", "k7x3_s21", "k13"])
def test_depthwise_backward(name, cl):
    _check_backward("triton_depthwise", DW_CASES[name], torch.float32, cl)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["fp64", "fp16"])
def test_depthwise_backward_dtypes(dtype):
    _check_backward("triton_depthwise", DW_CASES["k3_s2_mult2"], dtype, True)


def _assert_plans_launch_directly(module):
    """Every plan `module` holds launches through kernels._common.Launch objects whose
    arguments are laid out as the compiled kernel's own launcher takes them, so on a GPU they
    go direct after the first call (the interpreter always JIT-launches: only the layout can
    be checked here; tests/test_triton_gpu.py checks the direct launch itself)."""
    plans = module.FAMILY.plans()
    assert plans
    for plan in plans:
        assert plan.launches and all(launch.layout_ok for launch in plan.launches)


@pytest.fixture
def force_dw_tiles(policies):
    """force(fwd, bwd_input, bwd_weight, **tiles): the rows tuners' tiles fixed (and any
    other tuner's by name), which covers the kernels and tile shapes that only the GPU tuner
    would pick; the plans are fresh (no earlier plan is reused)."""
    from fastconv.kernels import depthwise as dw

    def force(fwd, bwd_input, bwd_weight, **tiles):
        for prefix, cfg in (("dw_fwd_rows", fwd), ("dw_bwd_input_rows", bwd_input),
                            ("dw_bwd_weight_rows", bwd_weight)):
            if cfg is not None:
                tiles.update({f"{prefix}_nchw": cfg, f"{prefix}_nhwc": cfg})
        policies(dw, dw.POLICY.forcing(**tiles))
    yield force


@pytest.mark.skipif(not INTERPRET, reason="forces the interpreter's tile choice")
@pytest.mark.parametrize("name,cl,rows,block_w,block_c,programs_per_sm", [
    ("k3", False, 8, 4, 4, 8),          # 8 accumulators, several column/channel tiles, split
    ("k7x3_s21", True, 8, 4, 2, 1),     # stride 2 down the rows, a 7x3 kernel
    ("k5_dil2", False, 1, 16, 8, 1),    # one row per program, dilation 2
], ids=["k3_rows8", "k7x3_s21_rows8", "k5_dil2_rows1"])
def test_depthwise_rows_tiles(force_dw_tiles, name, cl, rows, block_w, block_c,
                              programs_per_sm):
    cfg = dict(KIND="rows", ROWS=rows, BLOCK_W=block_w, BLOCK_C=block_c)
    force_dw_tiles(cfg, cfg, dict(cfg, P=programs_per_sm))
    _check_backward("triton_depthwise", DW_CASES[name], torch.float32, cl, "relu")
    from fastconv.kernels import depthwise as dw
    _assert_plans_launch_directly(dw)


@pytest.mark.skipif(not INTERPRET, reason="forces the interpreter's tile choice")
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_depthwise_tap_loop_kernels_small(force_dw_tiles, cl):
    """The tap-loop kernels still race the rows kernels for small filters on the GPU."""
    from fastconv.kernels import depthwise as dw
    force_dw_tiles(dw.INTERPRET_CONFIG, dw.INTERPRET_CONFIG, dw.WGRAD_INTERPRET_CONFIG)
    _check_backward("triton_depthwise", DW_CASES["k3"], torch.float32, cl)
    _assert_plans_launch_directly(dw)


@pytest.mark.skipif(not INTERPRET, reason="forces the interpreter's tile choice")
def test_depthwise_rows_large_kernel(force_dw_tiles):
    """13x13 on a 9x10 image (taps beyond UNROLL_TAPS): the rows tile of the large tuners."""
    rows = dict(KIND="rows", ROWS=8, BLOCK_W=16, BLOCK_C=4)
    force_dw_tiles(None, None, None, dw_fwd_nchw_v2=rows, dw_fwd_nhwc_v2=rows)
    _check_forward("triton_depthwise", DW_CASES["k13"], torch.float32, True, "relu")


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_depthwise_int64_index_paths(policies, cl):
    """NEED_I64 branches of every depthwise kernel, on small tensors (the GPU test file
    has a real 2^31-element tensor): offsets formed in int64 must give the same results."""
    from fastconv.kernels import depthwise as dw
    policies(dw, dataclasses.replace(dw.POLICY, int64=True))
    _check_backward("triton_depthwise", DW_CASES["k3"], torch.float32, cl)


def test_depthwise_backward_bf16_stride1():
    """bf16 through the flipped-kernel grad_input and the rows grad_weight."""
    _check_backward("triton_depthwise", DW_CASES["k3"], torch.bfloat16, True)


def test_depthwise_grad_weight_is_deterministic():
    x = torch.randn(2, 8, 12, 12, device=DEVICE)
    dy = torch.randn(2, 8, 12, 12, device=DEVICE)
    gw = torch.ops.fastconv.triton_depthwise_conv2d_grad_weight
    a = gw(dy, x, [8, 1, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 8)
    b = gw(dy, x, [8, 1, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 8)
    assert torch.equal(a, b)


def test_reference_loop_nests_match_fconv():
    """The plain loop nests kept beside the kernels are what the kernels compute."""
    from fastconv.kernels import depthwise, igemm

    xs, ws, st, pad, dil, g = IGEMM_CASES["grouped_cg2"]
    x, w, b = make(xs, ws, torch.float64, False)
    ref = ref_conv(x, w, b, st, pad, dil, g)
    assert rel_err(igemm.reference_conv2d(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), g), ref) < 1e-12
    xs, ws, st, pad, dil, g = DW_CASES["k3_s2_mult2"]
    x, w, b = make(xs, ws, torch.float64, False)
    ref = ref_conv(x, w, b, st, pad, dil, g)
    assert rel_err(depthwise.reference_conv2d(x, w, b, (2, 2), (1, 1, 1, 1), (1, 1)), ref) < 1e-12


def test_auto_picks_triton_on_cuda_or_interpreter():
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    spec = fastconv.conv_spec(x, torch.randn(4, 1, 3, 3, device=DEVICE), groups=4)[2]
    assert fastconv.algorithms  # registry is importable
    names = [a.name for a in fastconv.registry.applicable(spec)]
    assert "triton_depthwise" in names and "triton_igemm" in names


def test_errors_are_clear(monkeypatch):
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    with pytest.raises(ValueError, match="depthwise"):
        fastconv.conv2d(x, torch.randn(4, 4, 3, 3, device=DEVICE), algo="triton_depthwise")
    with pytest.raises(TypeError, match="dtype"):
        torch.ops.fastconv.triton_igemm_conv2d(x, torch.randn(4, 4, 3, 3, device=DEVICE).half(),
                                               None, [1, 1], [0, 0, 0, 0], [1, 1], 1)
    with pytest.raises(ValueError, match="activation"):
        torch.ops.fastconv.triton_igemm_conv2d(x, torch.randn(4, 4, 3, 3, device=DEVICE), None,
                                               [1, 1], [0, 0, 0, 0], [1, 1], 1, "tanh")
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            torch.ops.fastconv.triton_igemm_conv2d(x, torch.randn(4, 4, 3, 3), None, [1, 1],
                                                   [0, 0, 0, 0], [1, 1], 1)


def test_tuning_cache_roundtrip(tmp_path, monkeypatch):
    """The tile choice is timed once, written to $FASTCONV_CACHE_DIR under a key with the
    schema version, and read back by a second process without timing again; a policy's
    forced tile is never timed. Timing is faked: config A=2 wins."""
    from fastconv.kernels import _plan

    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FASTCONV_TUNE", "1")
    monkeypatch.setattr(_plan, "interpreting", lambda: False)
    monkeypatch.setattr(_plan, "device_name", lambda d: "fake-gpu")
    timed = []

    def fake_time(fn):
        fn()
        timed.append(launched[-1])
        return 1.0 if launched[-1]["A"] == 2 else 2.0
    monkeypatch.setattr(_plan, "gpu_time", fake_time)
    launched = []
    fake_cuda = type("FakeDevice", (), {"type": "cuda"})()
    tiles = _plan.Tiles("unit", (dict(A=1), dict(A=2)), dict(A=0))
    policy = _plan.Policy()
    _plan.forget_disk()
    try:
        best = _plan.tune(policy, tiles, "shape", fake_cuda, launched.append)
        assert best == dict(A=2) and len(timed) == 2
        _plan.forget_disk()  # as a new process sees it
        timed.clear()
        again = _plan.tune(policy, tiles, "shape", fake_cuda, launched.append)
        assert again == best and not timed, "a second process re-timed a cached shape"
        stored = json.loads((tmp_path / _plan.TUNER_FILE).read_text())
        assert [k.split("|")[:2] for k in stored] == [[f"v{_plan.TUNER_SCHEMA}", "unit"]]
        forced = _plan.tune(policy.forcing(unit=dict(A=1)), tiles, "other", fake_cuda,
                            launched.append)
        assert forced == dict(A=1) and not timed
    finally:
        _plan.forget_disk()


# --------------------------------------------------------------------------------------
# First sight: tile sources, the heuristic, shipped tiles, the notice, parallel compiles
# --------------------------------------------------------------------------------------
FAKE_GPU = "Fake GPU 80GB"
FAKE_CUDA = type("FakeDevice", (), {"type": "cuda"})()


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """tune() as on a GPU named FAKE_GPU, with empty user and shipped tile files under
    tmp_path; launches are recorded, never run."""
    from fastconv.kernels import _plan

    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path / "user"))
    monkeypatch.setattr(_plan, "SHIPPED_DIR", str(tmp_path / "shipped"))
    monkeypatch.setattr(_plan, "interpreted", lambda device: False)
    monkeypatch.setattr(_plan, "device_name", lambda device: FAKE_GPU)
    _plan.forget_disk()
    yield _plan
    _plan.forget_disk()


def _ship(plan, tiles, entries: dict, gpu=FAKE_GPU):
    """Write the shipped file of `gpu`: {shape key: tile} for `tiles`."""
    os.makedirs(plan.SHIPPED_DIR, exist_ok=True)
    path = os.path.join(plan.SHIPPED_DIR, plan.gpu_slug(gpu) + ".json")
    with open(path, "w") as f:
        json.dump({"gpu": gpu, "schema": plan.TUNER_SCHEMA, "triton": ["0.0"],
                   "tiles": {plan.shipped_key(tiles, k): v for k, v in entries.items()}}, f)
    plan.forget_disk()


def test_tile_sources_in_order(fake_gpu, monkeypatch):
    """memory, then the user's tuned file, then the tiles shipped for this GPU, then the
    heuristic (untimed, nothing launched, remembered in memory only)."""
    plan = fake_gpu
    tiles = plan.Tiles("unit", (dict(A=1), dict(A=2), dict(A=3)), dict(A=0),
                       (plan.Prefer((1,), {"pixels": (None, 100)}),))
    launched = []
    policy = plan.Policy()

    def tune(shape, pixels=1000, prune=None):
        return plan.tune(policy, tiles, shape, FAKE_CUDA, launched.append, prune,
                         plan.features(pixels, 8, 8, torch.float32))
    monkeypatch.delenv("FASTCONV_TUNE", raising=False)
    # the heuristic: the rule for small shapes, else the first kept candidate
    assert tune("small", pixels=10) == dict(A=2) and tune("large") == dict(A=1)
    assert tune("pruned", pixels=10, prune=lambda c: c["A"] != 2) == dict(A=1)
    assert not launched and not os.path.exists(os.path.join(plan.cache_dir(), plan.TUNER_FILE))
    assert plan.tile_sources()[plan.tuner_key(tiles, FAKE_GPU, "small")] == "heuristic"
    # shipped beats the heuristic, for any triton version; a tile the plan prunes is not used
    _ship(plan, tiles, {"s": dict(A=3), "pruned": dict(A=3)})
    assert tune("s") == dict(A=3)
    assert tune("pruned", prune=lambda c: c["A"] != 3) == dict(A=1)
    # the user's tuned file beats shipped; memory beats both
    plan._save(plan.tuner_key(tiles, FAKE_GPU, "s"), dict(A=2))
    plan.forget_disk()
    assert tune("s") == dict(A=2)
    assert plan.tile_sources()[plan.tuner_key(tiles, FAKE_GPU, "s")] == "tuned"
    plan._memory[plan.tuner_key(tiles, FAKE_GPU, "s")] = (dict(A=1), "tuned")
    assert tune("s") == dict(A=1)
    # another GPU's shipped file is not read
    _ship(plan, tiles, {"t": dict(A=3)}, gpu="Other GPU")
    assert tune("t") == dict(A=1)
    assert not launched


def test_race_replaces_a_heuristic_choice(fake_gpu, monkeypatch):
    """Racing is opt-in ("race", or FASTCONV_TUNE=1 as before): it times the candidates
    a heuristic choice in memory does not stop, and remembers the winner on disk."""
    plan = fake_gpu
    tiles = plan.Tiles("unit", (dict(A=1), dict(A=2)), dict(A=0))
    monkeypatch.setattr(plan, "gpu_time",
                        lambda fn: (fn(), 2.0 if launched[-1]["A"] == 1 else 1.0)[1])
    launched = []
    monkeypatch.setenv("FASTCONV_TUNE", "0")  # the old False: no timing
    assert plan.tune(plan.Policy(), tiles, "s", FAKE_CUDA, launched.append) == dict(A=1)
    assert not launched
    monkeypatch.setenv("FASTCONV_TUNE", "race")
    assert plan.tune(plan.Policy(), tiles, "s", FAKE_CUDA, launched.append) == dict(A=2)
    assert {c["A"] for c in launched} == {1, 2}
    stored = json.loads(open(os.path.join(plan.cache_dir(), plan.TUNER_FILE)).read())
    assert stored == {plan.tuner_key(tiles, FAKE_GPU, "s"): dict(A=2)}


def test_race_compiles_in_parallel_and_skips_failures(fake_gpu, monkeypatch):
    """Before timing, every candidate is compiled in a thread pool without launching
    (kernels/_common.compile_only); a candidate that fails to compile or run is skipped."""
    import threading

    from fastconv.kernels import _common

    plan = fake_gpu
    tiles = plan.Tiles("unit", tuple(dict(A=i) for i in range(4)), dict(A=0))
    compiled, ran = [], []

    def launch(cfg):
        if getattr(_common._compiling, "on", False):
            compiled.append((cfg["A"], threading.current_thread().name))
        else:
            ran.append(cfg["A"])
        if cfg["A"] == 1:
            raise RuntimeError("out of shared memory")

    monkeypatch.setattr(plan, "gpu_time", lambda fn: (fn(), 5.0 - ran[-1])[1])
    monkeypatch.setenv("FASTCONV_TUNE", "race")
    best = plan.tune(plan.Policy(), tiles, "s", FAKE_CUDA, launch)
    assert best == dict(A=3)
    assert sorted(a for a, _ in compiled) == [0, 1, 2, 3]
    assert all(name.startswith("fastconv-compile") for _, name in compiled)
    assert sorted(set(ran)) == [0, 1, 2, 3]  # 1 was tried, failed, skipped
    monkeypatch.setenv("FASTCONV_TUNE", "compile")
    compiled.clear()
    ran.clear()
    assert plan.tune(plan.Policy(), tiles, "t", FAKE_CUDA, launch) == dict(A=0)
    assert sorted(a for a, _ in compiled) == [0, 1, 2, 3] and not ran


def test_jit_launch_compiles_only_under_compile_only():
    """JITFunction.warmup compiles a candidate without launching it (the tuner's threads)."""
    from fastconv.kernels import _common

    calls = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *a, **kw: calls.append(("launch", grid))

        def warmup(self, *a, grid, **kw):
            calls.append(("warmup", grid))
    _common.jit_launch(Kernel(), (1,), 1, X=2)
    with _common.compile_only():
        _common.jit_launch(Kernel(), (2,), 1, X=2)
    _common.jit_launch(Kernel(), (3,), 1, X=2)
    assert calls == [("launch", (1,)), ("warmup", (2,)), ("launch", (3,))]


def _suite_convs():
    """(suite, layer name, input, weight, stride, padding, dilation, groups) of every suite
    layer at batch 8, as empty tensors (only planned here, never run)."""
    from fastconv.bench import tables

    for suite in tables.SUITES:
        for layer in tables.load(suite, batch=8):
            sp = layer.spec
            yield (f"{suite}/{layer.name}", (sp.N, sp.C, sp.H, sp.W),
                   (sp.K, sp.C // sp.groups, sp.R, sp.S), sp.stride, sp.padding, sp.dilation,
                   sp.groups)


def _families(cin, wshape, groups):
    from fastconv.kernels import GROUPED_MAX_GROUP_WIDTH, depthwise, grouped, igemm

    yield igemm.FAMILY
    if groups == cin and wshape[1] == 1:
        yield depthwise.FAMILY
    elif groups > 1 and max(wshape[0] // groups, wshape[1]) <= GROUPED_MAX_GROUP_WIDTH:
        yield grouped.FAMILY


@pytest.mark.parametrize("dtype,cl", [(torch.bfloat16, True), (torch.float32, False)],
                         ids=["bf16_cl", "fp32_nchw"])
def test_heuristic_picks_a_kept_candidate_for_every_suite_layer(fake_gpu, monkeypatch, dtype,
                                                                cl):
    """On first sight, every family's heuristic names one of the candidates its plan keeps,
    for all three ops of every layer in the benchmark tables, without launching anything."""
    from fastconv.kernels import _common

    plan = fake_gpu
    monkeypatch.delenv("FASTCONV_TUNE", raising=False)
    _common.set_debug_poison(False)  # plans allocate real-size outputs; nothing runs
    picks = []
    real_tune = plan.tune

    def spy(policy, tiles, shape_key, device, launch, prune=None, shape=None):
        cfg = real_tune(policy, tiles, shape_key, device, launch, prune, shape)
        kept = [dict(c) for c in tiles.candidates if prune is None or prune(c)]
        picks.append((tiles.name, cfg in (kept or [dict(tiles.candidates[0])])))
        return cfg

    def never(*a, **k):
        raise AssertionError("the heuristic launched a kernel")
    monkeypatch.setattr(plan, "gpu_time", never)
    from fastconv.kernels import depthwise, grouped, igemm
    for module in (igemm, depthwise, grouped):
        monkeypatch.setattr(module, "tune", spy)
    fmt = torch.channels_last if cl else torch.contiguous_format
    for name, xs, ws, stride, padding, dilation, groups in _suite_convs():
        x = torch.empty(xs, dtype=dtype).contiguous(memory_format=fmt)
        w = torch.empty(ws, dtype=dtype).contiguous(memory_format=fmt)
        ho = (xs[2] + padding[0] + padding[1] - dilation[0] * (ws[2] - 1) - 1) // stride[0] + 1
        wo = (xs[3] + padding[2] + padding[3] - dilation[1] * (ws[3] - 1) - 1) // stride[1] + 1
        dy = torch.empty(xs[0], ws[0], ho, wo, dtype=dtype).contiguous(memory_format=fmt)
        for fam in _families(xs[1], ws, groups):
            fam.plan_forward(x, w, None, stride, padding, dilation, groups, "none", fam.default)
            fam.plan_grad_input(dy, w, xs, stride, padding, dilation, groups, fam.default)
            fam.plan_grad_weight(dy, x, ws, stride, padding, dilation, groups, fam.default)
    assert picks and all(ok for _, ok in picks), [p for p in picks if not p[1]][:5]
    # every family's tile lists took part
    assert {n.split("_")[0] for n, _ in picks} == {"igemm", "dw", "grouped"}


def test_first_rules_name_real_candidates():
    """A first-sight rule naming no candidate is refused when the Tiles is made."""
    from fastconv.kernels import _plan

    with pytest.raises(ValueError, match="names no candidate"):
        _plan.Tiles("unit", (dict(A=1),), dict(A=0), (_plan.Prefer((1,)),))


def test_export_round_trip(fake_gpu, tmp_path, capsys):
    """A race's tuner file -> `fastconv tiles export` -> the shipped file, which tune()
    then reads under any triton version; other GPUs' entries and changed tile lists are
    dropped, and the newer triton's winner is kept where two raced one shape."""
    from fastconv.cli import main
    from fastconv.kernels import igemm

    plan = fake_gpu
    tiles = igemm.POLICY.fwd16
    first, second = dict(tiles.candidates[0]), dict(tiles.candidates[1])

    def key(shape, gpu=FAKE_GPU, triton_version="3.6.0", digest=tiles.digest):
        return (f"v{plan.TUNER_SCHEMA}|{tiles.name}|{digest}|{gpu}|triton-{triton_version}"
                f"|{shape}")
    tuned = {key("a"): second, key("b", triton_version="3.5.1"): first,
             key("b", triton_version="3.10.0"): second, key("c", gpu="Other GPU"): first,
             key("d", digest="00000000"): first, "v1|old": first}
    source = tmp_path / "triton_tiles.json"
    source.write_text(json.dumps(tuned))
    out = os.path.join(plan.SHIPPED_DIR, plan.gpu_slug(FAKE_GPU) + ".json")
    assert main(["tiles", "export", "--from", str(source), "--gpu", FAKE_GPU, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "2 tiles" in printed and "1 other gpu" in printed and "1 changed tile list" in printed
    shipped = json.loads(open(out).read())
    assert shipped["gpu"] == FAKE_GPU and shipped["triton"] == ["3.6.0", "3.10.0"]
    assert shipped["tiles"] == {plan.shipped_key(tiles, "a"): second,
                                plan.shipped_key(tiles, "b"): second}
    plan.forget_disk()
    got = plan.tune(igemm.POLICY, tiles, "a", FAKE_CUDA, None)
    assert got == second and plan.tile_sources()[plan.tuner_key(tiles, FAKE_GPU, "a")] == "shipped"
    # a second export merges into the file
    source.write_text(json.dumps({key("e"): first}))
    assert main(["tiles", "export", "--from", str(source), "--gpu", FAKE_GPU, "--out", out]) == 0
    assert len(json.loads(open(out).read())["tiles"]) == 3


def test_first_sight_notice(monkeypatch, caplog):
    """A plan (and its first run) that takes longer than the notice threshold says on the
    "fastconv" logger, once, which op and shape it is making and with which tile; faster
    ones and repeated calls say nothing. The clock is faked: each reading is 100 s later."""
    import logging

    from fastconv.kernels import _plan

    ticks = iter(range(0, 10**6, 100))
    monkeypatch.setattr(_plan, "clock", lambda: float(next(ticks)))
    monkeypatch.setattr(_plan, "SUMMARY_AFTER_S", 1e4)  # summarized below, by hand
    _plan.summarize()  # the bursts of earlier tests
    x = torch.randn(1, 3, 5, 7, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    before = _plan.first_sight_stats()

    def notices():
        return [r.getMessage() for r in caplog.records if r.name == "fastconv"]
    caplog.clear()
    with fastconv.settings.flags(first_sight_notice=50.0), caplog.at_level(logging.WARNING,
                                                                           "fastconv"):
        fastconv.conv2d(x, w, padding=1, algo="triton_igemm")
        fastconv.conv2d(x, w, padding=1, algo="triton_igemm")  # planned: silent
        lines = notices()
        fastconv.conv2d(x, w, padding=4, algo="triton_igemm")
        caplog.clear()
        _plan.summarize()  # the burst is over: one line for both
        assert notices() == [
            "fastconv: 2 slow first calls took 200.0 s in all (%s: 2); their plans and "
            "kernels are kept, later calls with these shapes do not wait"
            % ("interpreting" if INTERPRET else "compiling the heuristic tile")]
    assert len(lines) == 1, lines
    assert ("triton_igemm forward, input 1x3x5x7 float32 NCHW, weight 4x3x3x3, stride (1, 1), "
            "padding (1, 1)") in lines[0]
    assert ("interpreting" if INTERPRET else "compiling the heuristic tile") in lines[0]
    assert "took 100.0 s" in lines[0]
    after = _plan.first_sight_stats()
    assert after["slow"] == before["slow"] + 2 and after["plans"] == before["plans"] + 2
    caplog.clear()
    with fastconv.settings.flags(first_sight_notice=500.0), caplog.at_level(logging.WARNING,
                                                                             "fastconv"):
        fastconv.conv2d(x, w, padding=2, algo="triton_igemm")  # new shape, 100 s < 500 s
    with fastconv.settings.flags(first_sight_notice=None), caplog.at_level(logging.WARNING,
                                                                            "fastconv"):
        fastconv.conv2d(x, w, padding=3, algo="triton_igemm")
        _plan.summarize()  # nothing slow since the last summary
    assert not notices()


def test_first_sight_notice_while_stalled(monkeypatch, caplog):
    """The notice comes while the plan is still being made (a timer), not only after."""
    import logging
    import threading

    from fastconv.kernels import _plan

    said = threading.Event()
    monkeypatch.setattr(_plan.logger, "warning",
                        lambda *a: (caplog.records.append(logging.makeLogRecord(
                            {"name": "fastconv", "msg": a[0], "args": a[1:]})), said.set()))
    with fastconv.settings.flags(first_sight_notice=0.05):
        with _plan.FirstSight("igemm", "grad_weight", torch.empty(2, 4, 3, 3),
                              torch.empty(2, 3, 5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1):
            _plan.note_source("racing 9 igemm_bwd_weight tiles")
            assert said.wait(10), "no notice while stalled"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "so far" in lines[0] and "racing 9 igemm_bwd_weight" in lines[0]
    assert "grad_weight, grad_output 2x4x3x3 float32 NCHW, input 2x3x5x5" in lines[0]


def test_compile_ahead(monkeypatch):
    """settings.compile_ahead: a forward's first sight plans its gradients in background
    threads, where every launch only compiles (JITFunction.warmup); the backward waits for
    them and computes the same gradients."""
    import threading

    from fastconv.kernels import _common, _plan

    seen = []
    real = _common.jit_launch

    def spy(kernel, grid, *args, **kwargs):
        seen.append((threading.current_thread().name, getattr(_common._compiling, "on", False)))
        return real(kernel, grid, *args, **kwargs)
    monkeypatch.setattr(_common, "jit_launch", spy)
    monkeypatch.delenv("FASTCONV_TUNE", raising=False)
    x = torch.randn(2, 4, 6, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, device=DEVICE, requires_grad=True)
    before = _plan.ahead_stats()
    with fastconv.settings.flags(compile_ahead=True):
        y = fastconv.conv2d(x, w, padding=1, algo="triton_igemm")
        y.square().sum().backward()
    after = _plan.ahead_stats()
    assert after["started"] - before["started"] == 2
    assert after["done"] - before["done"] == 2 and after["failed"] == before["failed"]
    assert seen and all(name.startswith("fastconv-ahead") and on for name, on in seen)
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    F.conv2d(xr, wr, padding=1).square().sum().backward()
    assert rel_err(x.grad, xr.grad) < 1e-5 and rel_err(w.grad, wr.grad) < 1e-5


def test_opcheck():
    """Schema, fake kernel, autograd registration and AOT dispatch of a Triton op."""
    x = torch.randn(1, 2, 4, 4, device=DEVICE)
    w = torch.randn(2, 1, 3, 3, device=DEVICE)
    torch.library.opcheck(torch.ops.fastconv.triton_depthwise_conv2d,
                          (x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 2, "relu"))


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("variant", ["bf16", "tf32"])
@pytest.mark.parametrize("name", ["k13", "k31"])
def test_depthwise_large_kernel_tensor_core_path(name, variant, cl):
    """Wide kernels in bf16 or under TF32 may run as banded GEMMs on the tensor cores
    (the interpreter always takes that path there; on CUDA the tuner races it)."""
    torch.backends.cudnn.allow_tf32 = variant == "tf32"
    dtype = torch.bfloat16 if variant == "bf16" else torch.float32
    _check_forward("triton_depthwise", DW_CASES[name], dtype, cl, "relu",
                   tol=TOL[torch.bfloat16] if variant == "bf16" else TF32_TOL)


# (N, C, H, W), (K, C/g, R, S), stride, padding, dilation, groups
GROUPED_CASES = {
    "cg4": ((2, 16, 7, 6), (16, 4, 3, 3), 1, 1, 1, 4),
    "cg2_kg3": ((1, 12, 6, 7), (18, 2, 3, 3), 1, 1, 1, 6),
    "cg8_s2_asym": ((1, 24, 9, 8), (24, 8, 3, 3), 2, (1, 2), 1, 3),
    "cg4_dil2_rect": ((1, 8, 9, 10), (12, 4, 3, 2), (1, 2), 2, 2, 2),
    "cg3_kg5_same": ((1, 9, 6, 7), (15, 3, 4, 4), 1, "same", 1, 3),
    "cg1_depthwise_shape": ((1, 8, 6, 6), (16, 1, 3, 3), 1, 1, 1, 8),
    "cg16_5groups": ((1, 80, 4, 5), (80, 16, 3, 3), 1, 1, 1, 5),
    # stride 3 > kernel 2: some input pixels get no tap at all (grad_input writes zeros)
    "cg2_s3x2_k2x3": ((1, 8, 10, 9), (8, 2, 2, 3), (3, 2), (0, 1), 1, 4),
}


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", list(GROUPED_CASES))
def test_grouped_forward_fp32(name, cl):
    _check_forward("triton_grouped", GROUPED_CASES[name], torch.float32, cl)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16],
                         ids=["fp64", "fp16", "bf16"])
@pytest.mark.parametrize("name", ["cg4", "cg3_kg5_same"])
def test_grouped_forward_dtypes(name, dtype):
    _check_forward("triton_grouped", GROUPED_CASES[name], dtype, name == "cg4")


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
def test_grouped_epilogue(activation):
    _check_forward("triton_grouped", GROUPED_CASES["cg2_kg3"], torch.float32, True, activation)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", ["cg4", "cg2_kg3", "cg8_s2_asym", "cg4_dil2_rect", "cg3_kg5_same",
                                  "cg2_s3x2_k2x3"])
def test_grouped_backward(name, cl):
    _check_backward("triton_grouped", GROUPED_CASES[name], torch.float32, cl)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp64", "bf16", "fp16"])
def test_grouped_backward_dtypes(dtype):
    _check_backward("triton_grouped", GROUPED_CASES["cg8_s2_asym"], dtype, True)


def test_grouped_backward_through_epilogue():
    _check_backward("triton_grouped", GROUPED_CASES["cg4"], torch.float32, True, "silu")


@pytest.mark.parametrize("tile,wtile", [
    # CUDA-core broadcast tile (fp64's path too); grad_weight one program per tap
    (dict(KIND="direct", GPT=4, BLOCK_M=16), dict(KIND="tap", GPT_X=1, BLOCK_Q=16)),
    # twice the groups a dot needs, in every kernel; the tap loop not unrolled (pipelined)
    (dict(KIND="bdp", GPT_X=2, BLOCK_M=16), dict(KIND="tap", GPT_X=2, BLOCK_Q=32)),
    # the first 2^k taps as one long-K dot (forward only; grad_input runs it as "bd")
    (dict(KIND="bdk", GPT_X=1, BLOCK_M=16), dict(KIND="taps", GPT_X=2, BLOCK_Q=16)),
], ids=["direct", "x2_pipelined", "taps_in_k"])
@pytest.mark.parametrize("name", ["cg4", "cg2_kg3", "cg8_s2_asym"])
def test_grouped_tile_variants(name, tile, wtile, policies):
    """The interpreter runs one fixed tile; the GPU tuner races the others: check those too
    (forward and grad_input share the kernel)."""
    from fastconv.kernels import grouped

    policies(grouped, grouped.POLICY.forcing(grouped_fwd=tile, grouped_bwd_input=tile,
                                             grouped_bwd_weight=wtile))
    _check_backward("triton_grouped", GROUPED_CASES[name], torch.float32, name != "cg2_kg3")
    _assert_plans_launch_directly(grouped)


@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
def test_grouped_tf32_flag(tf32):
    torch.backends.cudnn.allow_tf32 = tf32
    xs, ws, st, pad, dil, g = GROUPED_CASES["cg8_s2_asym"]
    x, w, b = make(xs, ws, torch.float32, True)
    err = rel_err(fastconv.conv2d(x, w, b, st, pad, dil, g, algo="triton_grouped"),
                  ref_conv(x, w, b, st, pad, dil, g))
    if tf32:
        assert err < TF32_TOL
        if CUDA:
            assert err > 1e-6, "allow_tf32=True but the result is IEEE-exact: TF32 not used"
    else:
        assert err < TOL[torch.float32]


def test_grouped_reference_loop_nest():
    """reference_conv2d (block-diagonal weight per chunk of groups) is what F.conv2d computes,
    including a last chunk with fewer groups than the chunk holds."""
    from fastconv.kernels import grouped

    xs, ws, st, pad, dil, g = GROUPED_CASES["cg16_5groups"]
    x, w, b = make(xs, ws, torch.float64, False)
    ref = ref_conv(x, w, b, st, pad, dil, g)
    out = grouped.reference_conv2d(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), g, gpt=2)
    assert rel_err(out, ref) < 1e-12


def test_grouped_grad_weight_is_deterministic():
    x = torch.randn(2, 16, 9, 9, device=DEVICE)
    dy = torch.randn(2, 16, 9, 9, device=DEVICE)
    gw = torch.ops.fastconv.triton_grouped_conv2d_grad_weight
    args = ([16, 4, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 4)
    assert torch.equal(gw(dy, x, *args), gw(dy, x, *args))


def test_grouped_applicability_and_auto():
    """auto on CUDA: triton_grouped for narrow groups, igemm for dense or wide groups,
    depthwise for depthwise; triton_grouped refuses dense convs with a reason."""
    from fastconv.spec import ConvSpec

    def spec(c, k, g):
        return ConvSpec(32, c, 14, 14, k, 3, 3, padding=(1, 1, 1, 1), groups=g,
                        layout="nhwc", device="cuda")
    assert fastconv.registry.choose(spec(128, 128, 32)).name == "triton_grouped"
    assert fastconv.registry.choose(spec(1024, 1024, 32)).name == "triton_grouped"
    assert fastconv.registry.choose(spec(256, 256, 1)).name == "triton_igemm"
    assert fastconv.registry.choose(spec(256, 256, 2)).name == "triton_igemm"
    assert fastconv.registry.choose(spec(64, 64, 64)).name == "triton_depthwise"
    why = fastconv.registry.get("triton_grouped").applicable(spec(256, 256, 1))
    assert why and "groups" in why
    x = torch.randn(1, 8, 5, 5, device=DEVICE)
    with pytest.raises(ValueError, match="groups"):
        fastconv.conv2d(x, torch.randn(8, 8, 3, 3, device=DEVICE), algo="triton_grouped")
    with pytest.raises(ValueError, match="per group"):
        torch.ops.fastconv.triton_grouped_conv2d(
            torch.randn(1, 130, 3, 3, device=DEVICE), torch.randn(130, 65, 1, 1, device=DEVICE),
            None, [1, 1], [0, 0, 0, 0], [1, 1], 2)
    with pytest.raises(ValueError, match="groups"):
        torch.ops.fastconv.triton_grouped_conv2d(x, torch.randn(8, 3, 3, 3, device=DEVICE), None,
                                                 [1, 1], [0, 0, 0, 0], [1, 1], 2)


def test_grouped_opcheck():
    x = torch.randn(1, 8, 4, 4, device=DEVICE)
    w = torch.randn(8, 2, 3, 3, device=DEVICE)
    torch.library.opcheck(torch.ops.fastconv.triton_grouped_conv2d,
                          (x, w, torch.randn(8, device=DEVICE), [1, 1], [1, 1, 1, 1], [1, 1], 4,
                           "relu"))


def test_grouped_int64_path(policies):
    """The int64 offset path (taken past 2^31 elements, see test_triton_gpu.py) computes the
    same thing: force it on a tiny case."""
    from fastconv.kernels import grouped

    policies(grouped, dataclasses.replace(grouped.POLICY, int64=True))
    _check_backward("triton_grouped", GROUPED_CASES["cg8_s2_asym"], torch.float32, True)

# --- Host overhead: the eager fast path and the plans' direct launch ----------------------

def test_eager_fast_path_runs_the_triton_kernels():
    """fastconv.conv2d skips the dispatcher (one autograd.Function over the kernel module's
    functions) and gives the ops' results and gradients; FlopCounterMode still sees the ops."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastconv import _eager

    case = IGEMM_CASES["dense3x3"]
    x, w, b = make(case[0], case[1], torch.float32, True, requires_grad=True)
    out = fastconv.conv2d(x, w, b, *case[2:], algo="triton_igemm", activation="silu")
    assert type(out.grad_fn).__name__ == "Conv2dFunctionBackward"
    gy = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, b), gy)
    _eager.ENABLED = False
    try:
        ref = fastconv.conv2d(x, w, b, *case[2:], algo="triton_igemm", activation="silu")
        assert type(ref.grad_fn).__name__ != "Conv2dFunctionBackward"
        for g, r in zip(grads, torch.autograd.grad(ref, (x, w, b), gy)):
            assert torch.equal(g, r)
    finally:
        _eager.ENABLED = True
    assert torch.equal(out, ref)
    xs, ws = DW_CASES["k3"][:2]
    xd, wd, bd = make(xs, ws, torch.float32, False)
    with FlopCounterMode(display=False) as fc:
        fastconv.conv2d(xd, wd, bd, 1, 1, 1, 6, algo="triton_depthwise")
    assert fc.get_total_flops() == 2 * 2 * 6 * 7 * 9 * 9


def test_direct_launch_caches_per_dtype_alignment_and_device(monkeypatch):
    """Launch: the first call per (device, tensor dtypes, 16-byte alignment) goes through the
    JIT launch; once the CompiledKernel it returned has written the same output when called
    directly, later calls use it, with a 3-D grid and every parameter in order (constexprs
    included), as JITFunction.run does. A compiled kernel that writes something else (or
    raises) is never used."""
    from fastconv.kernels import _common

    class Compiled:
        def __init__(self, value):
            self.value = value

        def __getitem__(self, grid):
            def launch(*args):
                calls.append(("direct", grid, args[:-1] if args[1] is None else args))
                args[1].fill_(self.value)  # the output: the last tensor, before the scalars
            return launch

    class Jit:
        arg_names = ["a", "out", "n", "m", "BLOCK", "ACT"]

        def __init__(self, direct_value=None):
            self.direct_value = direct_value

        def __getitem__(self, grid):
            def launch(a, out, *args, **kwargs):
                calls.append(("jit", grid, (a, out, *args), kwargs))
                out.fill_(1.0)
                return Compiled(1.0 if self.direct_value is None else self.direct_value)
            return launch

    calls = []
    device = [0]
    monkeypatch.setattr(_common, "_CompiledKernel", Compiled)
    monkeypatch.setattr(_common, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(_common, "_current_device", lambda: device[0])
    cuda = type("FakeDevice", (), {"type": "cuda"})()
    kw = dict(ACT=1, BLOCK=64, num_warps=4)
    launch = _common.Launch(Jit(), [3, 2], 2, (7, 9), kw, cuda)
    a, out = torch.zeros(16), torch.zeros(16)
    launch(a, out)
    assert calls[0] == ("jit", (3, 2), (a, out, 7, 9), kw)
    assert calls[1][0] == "direct"  # the one-time check, into another buffer
    assert launch.layout_ok and launch.direct
    out.zero_()
    launch(a, out)
    assert calls[-1][:2] == ("direct", (3, 2, 1)) and calls[-1][2][0] is a
    assert calls[-1][2][1] is out and calls[-1][2][2:] == (7, 9, 64, 1)
    assert (out == 1).all()
    for other in (a[1:], a.double()):  # 4-byte offset: not 16-aligned; another dtype
        launch(other, out)
        assert calls[-2][0] == "jit"
        launch(other, out)
        assert calls[-1][0] == "direct"
    device[0] = 1  # another current device: compiled for it anew
    n = len(calls)
    launch(a, out)
    assert calls[n][0] == "jit"
    # A compiled kernel whose direct launch writes something else is never used.
    wrong = _common.Launch(Jit(direct_value=2.0), [1], 2, (7, 9), kw, cuda)
    for _ in range(3):
        wrong(a, out)
        assert calls[-1][0] == "jit" or calls[-2][0] == "jit"
    assert wrong.compiled is None and not wrong.direct and (out == 1).all()
    # An output with no like-for-like buffer to check against: JIT, and checked next time.
    unchecked = _common.Launch(Jit(), [1], 2, (7, 9), kw, cuda)
    unchecked(a, out[1:])
    assert calls[-1][0] == "jit" and unchecked.compiled == {} and not unchecked.direct
    # No direct launch where Triton's kernel parameters are not what the plan passes.
    odd = _common.Launch(Jit(), [1], 2, (7,), dict(BLOCK=64), cuda)
    assert odd.compiled is None and not odd.layout_ok
    odd(a, out)
    assert calls[-1][0] == "jit"
    # Nor under the interpreter.
    monkeypatch.setattr(_common, "interpreting", lambda: True)
    assert _common.Launch(Jit(), [1], 2, (7, 9), kw, cuda).compiled is None


def test_outputs_are_poisoned_in_tests():
    """conftest switches the kernels' NaN poisoning on for every test (read once from
    FASTCONV_POISON at import, then set through _common.set_debug_poison)."""
    from fastconv.kernels import _common

    assert _common.POISON
    assert torch.isnan(_common.new_output((2, 3), torch.zeros(1), False)).all()


# --- One host layer, one schema --------------------------------------------------------

@pytest.mark.parametrize("family", ["triton_igemm", "triton_depthwise", "triton_grouped"])
def test_triton_and_cpp_schemas_agree(family):
    """The Triton ops (fastconv/_triton.py) declare exactly the C++ families' schemas
    (csrc/fastconv.cpp), argument names, types and defaults included."""
    ops = torch.ops.fastconv
    for suffix in ("_conv2d", "_conv2d_grad_input", "_conv2d_grad_weight"):
        got = getattr(ops, family + suffix).default._schema
        for cpp in ("reference", "im2col", "direct", "depthwise"):
            want = getattr(ops, cpp + suffix).default._schema
            assert str(got).replace(family, "F") == str(want).replace(cpp, "F")
            assert [(a.name, str(a.type), a.default_value) for a in got.arguments] == [
                (a.name, str(a.type), a.default_value) for a in want.arguments]


def test_every_plan_carries_its_launches(policies):
    """Forward, grad_input and grad_weight plans of every family list every Launch their run
    calls, and each grad_weight ends in the one fixed-order split-sum kernel."""
    from fastconv.kernels import _common, depthwise, grouped, igemm

    cases = ((igemm, "triton_igemm", IGEMM_CASES["dense3x3"]),
             (depthwise, "triton_depthwise", DW_CASES["k3"]),
             (grouped, "triton_grouped", GROUPED_CASES["cg4"]))
    for module, algo, case in cases:
        policies(module, module.POLICY.forcing())  # this test's plans only
        _check_backward(algo, case, torch.float32, False)
        plans = module.FAMILY.plans()
        assert len(plans) == 3, algo
        for plan in plans:
            assert plan.launches and all(launch.layout_ok for launch in plan.launches), algo
        wgrad = list(module.FAMILY.grad_weight_plans.values())[0]
        assert wgrad.launches[-1].kernel is _common.split_sum_kernel, algo


@pytest.mark.parametrize("length,block,tiles,programs,min_blocks", [
    (1000, 32, 4, 64, 4), (7, 16, 1, 132, 4), (5000, 1, 12, 24, 1), (64, 64, 200, 8, 1)])
def test_split_reduction_covers_the_reduction(length, block, tiles, programs, min_blocks):
    from fastconv.kernels._plan import split_reduction

    split, chunk = split_reduction(length, block, tiles, programs, min_blocks)
    assert chunk % block == 0 and split * chunk >= length > (split - 1) * chunk
    assert split == 1 or tiles * split <= max(programs, tiles)


def test_policies_are_frozen_and_default_to_the_module_policy():
    """Policies are data: frozen, replaced rather than changed, and each family plans
    with its module's POLICY unless a block says otherwise."""
    from fastconv.kernels import depthwise, grouped, igemm

    for module in (igemm, depthwise, grouped):
        assert module.FAMILY.policy is module.POLICY is module.FAMILY.default
        with pytest.raises(dataclasses.FrozenInstanceError):
            module.POLICY.force = {}
        other = module.POLICY.forcing()
        with module.FAMILY.using(other):
            assert module.FAMILY.policy is other
        assert module.FAMILY.policy is module.POLICY


# --- Issue 15 on the Triton families: NaN through the epilogue, double backward, torch.func ---
TRITON_FAMILIES = {  # algo: (input shape, weight shape, groups), small for the interpreter
    "triton_igemm": ((1, 1, 3, 5), (2, 1, 1, 1), 1),
    "triton_depthwise": ((1, 2, 3, 5), (2, 1, 1, 1), 2),
    "triton_grouped": ((1, 2, 3, 5), (2, 1, 1, 1), 2),
}


@pytest.mark.parametrize("activation", ["relu", "relu6", "silu"])
@pytest.mark.parametrize("algo", list(TRITON_FAMILIES))
def test_epilogue_propagates_nan_and_inf(algo, activation):
    """Each pixel's pre-activation is one input value times 1: NaN and +-Inf reach the
    epilogue as they are, and the fused activation must treat them as torch's does."""
    xs, ws, groups = TRITON_FAMILIES[algo]
    # triton_grouped's fp32 tile is a dot with a block-diagonal weight: there a NaN or Inf
    # input also meets the other groups' stored zeros (NaN in every group's output), so the
    # epilogue is checked on its fp64 path, a direct tile.
    dtype = torch.float64 if algo == "triton_grouped" else torch.float32
    vals = torch.tensor([float("nan"), float("inf"), -float("inf"), -1.0, 7.0], dtype=dtype)
    x = vals.repeat(xs[0], xs[1], xs[2], 1).to(DEVICE)
    w = torch.ones(ws, dtype=dtype).to(DEVICE)  # no 0 * Inf anywhere
    out = fastconv.conv2d(x, w, None, groups=groups, algo=algo, activation=activation)
    act = {"relu": torch.relu, "relu6": F.relu6, "silu": F.silu}[activation]
    ref = act(F.conv2d(x.cpu(), w.cpu(), None, groups=groups))
    torch.testing.assert_close(out.cpu(), ref, equal_nan=True)


@pytest.mark.parametrize("algo", list(TRITON_FAMILIES))
def test_double_backward(algo):
    """gradgradcheck through the Triton ops (the grad ops' registered autograd), float64."""
    xs, ws, groups = TRITON_FAMILIES[algo]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    w = torch.randn(ws, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    f = lambda x, w: fastconv.conv2d(x, w, None, 1, 0, 1, groups, algo=algo, activation="silu")  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x, w), fast_mode=True)


@pytest.mark.parametrize("algo", list(TRITON_FAMILIES))
def test_forward_ad_and_vmap(algo):
    xs, ws, groups = TRITON_FAMILIES[algo]
    x = torch.randn(xs, dtype=torch.float64).to(DEVICE)
    w = torch.randn(ws, dtype=torch.float64).to(DEVICE)
    t = torch.randn_like(x)
    conv = lambda x, w: fastconv.conv2d(x, w, None, groups=groups, algo=algo)  # noqa: E731
    got = torch.func.jvp(lambda x: conv(x, w), (x,), (t,))[1]
    torch.testing.assert_close(got, F.conv2d(t, w, None, groups=groups))
    ws_batch = torch.stack([w, 2 * w])
    got = torch.func.vmap(conv, in_dims=(None, 0))(x, ws_batch)
    torch.testing.assert_close(got, torch.stack([F.conv2d(x, v, None, groups=groups) for v in ws_batch]))


@pytest.mark.parametrize("algo,groups,cl,c,hw", [
    ("triton_igemm", 1, False, 8, 7), ("triton_igemm", 1, True, 8, 7),
    # 16 channels, 16x16 NCHW fp32: the weight copies (forward C-major, grad_input K-major)
    ("triton_igemm", 1, False, 16, 16),
    # 16 channels on a 7x7 NCHW plane: forward and grad_input run channels_last copies
    ("triton_igemm", 1, False, 16, 7),
    ("triton_depthwise", 8, False, 8, 7), ("triton_depthwise", 8, True, 8, 7),
    ("triton_grouped", 4, True, 8, 7), ("triton_grouped", 4, False, 8, 7),
])
def test_plan_steps_describe_the_python_run(algo, groups, cl, c, hw):
    """A plan's Steps (what _C.NativePlan runs in C++ on a GPU) do what its Python run does:
    the same buffers, launches and result, bit for bit, for every plan of a forward and
    backward that has them."""
    import importlib

    from fastconv import _C
    from fastconv.kernels import _plan

    mod = importlib.import_module("fastconv.kernels." + algo.split("_", 1)[1])
    fmt = torch.channels_last if cl else torch.contiguous_format
    torch.manual_seed(0)
    x = torch.randn(2, c, hw, hw).to(memory_format=fmt).requires_grad_(True)
    w = torch.randn(c, c // groups, 3, 3).to(memory_format=fmt).requires_grad_(True)
    b = torch.randn(c).requires_grad_(True)
    with mod.FAMILY.using(mod.POLICY.forcing()):  # plans of this test alone
        y = fastconv.conv2d(x, w, b, 1, 1, 1, groups, algo=algo)
        dy = torch.randn_like(y)
        torch.autograd.grad(y, (x, w, b), dy)
        args = {"fwd_plans": (x.detach(), w.detach(), b.detach()),
                "grad_input_plans": (dy, w.detach()), "grad_weight_plans": (dy, x.detach())}
        described = copies = 0
        for cache, call in args.items():
            for plan in getattr(mod.FAMILY, cache).values():
                if plan.steps is None:
                    continue
                described += 1
                copies += sum(buf[0] == "copy" for buf in plan.steps.buffers)
                assert torch.equal(plan.steps.reference(*call), plan.run(*call)), cache
                # and C++ accepts them (stand-in launches: nothing runs on a CPU)
                stand_ins = [_C.NativeLaunch([1, 1, 1], len(slots), [("tensor", i) for i in
                                                                     range(len(slots))])
                             for _, slots in plan.steps.launches]
                _plan.native_plan(plan.steps, stand_ins)
    assert described >= 2
    assert copies == {(16, 16): 2, (16, 7): 4}.get((c, hw), 0)
