"""The full correctness matrix of the Triton kernels on CUDA against F.conv2d: real layer
shapes (ResNet-50, ResNeXt-50 32x4d, MobileNetV2, ConvNeXt-T, RepLKNet-31B) at a small
batch, forward and both gradients, every dtype and layout, TF32 on and off, and the
2^31-element index boundary. Marked `gpu`: skipped without a CUDA device.

The layer tables are defined here on purpose (the bench helper keeps its own).
"""
import pytest
import torch
import torch.nn.functional as F

import fastconv

pytestmark = pytest.mark.gpu
BATCH = 2

# (C, K, H, R, stride, groups): square images and kernels, padding R // 2.
RESNET50 = [
    (3, 64, 224, 7, 2, 1),
    (64, 64, 56, 1, 1, 1), (64, 64, 56, 3, 1, 1), (64, 256, 56, 1, 1, 1), (256, 64, 56, 1, 1, 1),
    (256, 128, 56, 1, 1, 1), (128, 128, 56, 3, 2, 1), (128, 512, 28, 1, 1, 1),
    (256, 512, 56, 1, 2, 1), (512, 128, 28, 1, 1, 1), (128, 128, 28, 3, 1, 1),
    (512, 256, 28, 1, 1, 1), (256, 256, 28, 3, 2, 1), (256, 1024, 14, 1, 1, 1),
    (512, 1024, 28, 1, 2, 1), (1024, 256, 14, 1, 1, 1), (256, 256, 14, 3, 1, 1),
    (1024, 512, 14, 1, 1, 1), (512, 512, 14, 3, 2, 1), (512, 2048, 7, 1, 1, 1),
    (1024, 2048, 14, 1, 2, 1), (2048, 512, 7, 1, 1, 1), (512, 512, 7, 3, 1, 1),
]
RESNEXT50_GROUPED = [
    (128, 128, 56, 3, 1, 32), (256, 256, 56, 3, 2, 32), (256, 256, 28, 3, 1, 32),
    (512, 512, 28, 3, 2, 32), (512, 512, 14, 3, 1, 32), (1024, 1024, 14, 3, 2, 32),
    (1024, 1024, 7, 3, 1, 32),
]
MOBILENETV2_DW = [
    (32, 32, 112, 3, 1, 32), (96, 96, 112, 3, 2, 96), (144, 144, 56, 3, 1, 144),
    (144, 144, 56, 3, 2, 144), (192, 192, 28, 3, 1, 192), (192, 192, 28, 3, 2, 192),
    (384, 384, 14, 3, 1, 384), (576, 576, 14, 3, 1, 576), (576, 576, 14, 3, 2, 576),
    (960, 960, 7, 3, 1, 960),
]
CONVNEXT_T_DW = [(96, 96, 56, 7, 1, 96), (192, 192, 28, 7, 1, 192), (384, 384, 14, 7, 1, 384),
                 (768, 768, 7, 7, 1, 768)]
REPLKNET31B_DW = [(128, 128, 56, 31, 1, 128), (256, 256, 28, 29, 1, 256),
                  (512, 512, 14, 27, 1, 512), (1024, 1024, 7, 13, 1, 1024)]

LAYERS = ([("resnet50", l) for l in RESNET50] + [("resnext50", l) for l in RESNEXT50_GROUPED]
          + [("mobilenetv2", l) for l in MOBILENETV2_DW] + [("convnext_t", l) for l in CONVNEXT_T_DW]
          + [("replknet31b", l) for l in REPLKNET31B_DW])
VARIANTS = {  # name: (dtype, tf32, forward tolerance)
    "fp32": (torch.float32, False, 1e-5),
    "tf32": (torch.float32, True, 3e-3),
    "bf16": (torch.bfloat16, False, 1e-2),
    "fp16": (torch.float16, False, 1e-2),
}


def rel_err(out, ref):
    assert out.shape == ref.shape
    assert not torch.isnan(out).any(), "NaN in output: an element was not written"
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _ids(layers):
    return [f"{net}-C{c}K{k}-{h}-{r}x{r}-s{s}-g{g}" for net, (c, k, h, r, s, g) in layers]


@pytest.fixture
def tf32_flag():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("net,layer", LAYERS, ids=_ids(LAYERS))
def test_layer(net, layer, variant, cl, tf32_flag):
    dtype, tf32, tol = VARIANTS[variant]
    torch.backends.cudnn.allow_tf32 = tf32
    c, k, h, r, s, g = layer
    fmt = torch.channels_last if cl else torch.contiguous_format
    # Large depthwise kernels are compute-heavy in fp64: one image there.
    n = 1 if r > 7 else BATCH
    x = torch.randn(n, c, h, h, device="cuda").to(dtype).contiguous(memory_format=fmt)
    w = (torch.randn(k, c // g, r, r, device="cuda") / (c // g * r * r) ** 0.5).to(dtype)
    w = w.contiguous(memory_format=fmt)
    b = torch.randn(k, device="cuda").to(dtype)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    out = fastconv.conv2d(x, w, b, s, r // 2, 1, g)
    assert out.is_contiguous(memory_format=fmt)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xr, wr, br, s, r // 2, 1, g)
    assert rel_err(out, ref) < tol
    if variant in ("fp16",) and net == "resnet50":
        return  # fp16 gradients: covered by bf16 and the smaller nets
    grad = torch.randn_like(out)
    gx, gw, gb = torch.autograd.grad(out, (x, w, b), grad)
    rx, rw, rb = torch.autograd.grad(ref, (xr, wr, br), grad.double())
    # Gradients reduce over far more terms (grad_weight: N*Ho*Wo); bound them looser.
    gtol = tol * (4 if dtype != torch.float32 or tf32 else 10)
    assert rel_err(gx, rx) < gtol
    assert rel_err(gw, rw) < gtol
    assert rel_err(gb, rb) < gtol


RESNEXT_IDS = [f"C{c}-{h}-s{s}" for c, k, h, r, s, g in RESNEXT50_GROUPED]


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("layer", RESNEXT50_GROUPED, ids=RESNEXT_IDS)
def test_grouped_resnext(layer, variant, cl, tf32_flag):
    """triton_grouped named explicitly (auto may pick it or not): forward with a fused
    bias+ReLU, grad_input and grad_weight against float64 F.conv2d."""
    dtype, tf32, tol = VARIANTS[variant]
    torch.backends.cudnn.allow_tf32 = tf32
    c, k, h, r, s, g = layer
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(BATCH, c, h, h, device="cuda").to(dtype).contiguous(memory_format=fmt)
    w = (torch.randn(k, c // g, r, r, device="cuda") / (c // g * r * r) ** 0.5).to(dtype)
    w = w.contiguous(memory_format=fmt)
    b = torch.randn(k, device="cuda").to(dtype)
    out = fastconv.conv2d(x, w, b, s, r // 2, 1, g, algo="triton_grouped", activation="relu")
    assert out.is_contiguous(memory_format=fmt)
    ref = torch.relu(F.conv2d(x.double(), w.double(), b.double(), s, r // 2, 1, g))
    assert rel_err(out, ref) < tol
    dy = torch.randn(out.shape, device="cuda").to(dtype).contiguous(memory_format=fmt)
    args = ([s, s], [r // 2] * 4, [1, 1], g)
    gx = torch.ops.fastconv.triton_grouped_conv2d_grad_input(dy, w, list(x.shape), *args)
    gw = torch.ops.fastconv.triton_grouped_conv2d_grad_weight(dy, x, list(w.shape), *args)
    rx = torch.nn.grad.conv2d_input(list(x.shape), w.double(), dy.double(), s, r // 2, 1, g)
    rw = torch.nn.grad.conv2d_weight(x.double(), list(w.shape), dy.double(), s, r // 2, 1, g)
    gtol = tol * (4 if dtype != torch.float32 or tf32 else 10)
    assert rel_err(gx, rx) < gtol
    assert rel_err(gw, rw) < gtol


@pytest.mark.parametrize("variant", ["bf16", "tf32"])
@pytest.mark.parametrize("layer", [RESNEXT50_GROUPED[0], RESNEXT50_GROUPED[3]],
                         ids=["cg4", "cg16s2"])
def test_grouped_every_tile(layer, variant, tf32_flag):
    """Each forward/grad_input tile the tuner may pick (tests otherwise see only the first;
    the tuner would pick a fast wrong one)."""
    from fastconv.kernels import grouped

    dtype, tf32, tol = VARIANTS[variant]
    torch.backends.cudnn.allow_tf32 = tf32
    c, k, h, r, s, g = layer
    cl = torch.channels_last
    x = torch.randn(BATCH, c, h, h, device="cuda").to(dtype).contiguous(memory_format=cl)
    w = (torch.randn(k, c // g, r, r, device="cuda") / (c // g * r * r) ** 0.5).to(dtype)
    w = w.contiguous(memory_format=cl)
    dy = torch.randn(BATCH, k, (h - 1) // s + 1, (h - 1) // s + 1, device="cuda").to(dtype)
    dy = dy.contiguous(memory_format=cl)
    ref = F.conv2d(x.double(), w.double(), None, s, r // 2, 1, g)
    rx = torch.nn.grad.conv2d_input(list(x.shape), w.double(), dy.double(), s, r // 2, 1, g)
    tried = 0
    tiles = grouped.FWD_CONFIGS + [c for c in grouped.BWD_INPUT_CONFIGS
                                   if c not in grouped.FWD_CONFIGS]
    for cfg in tiles:
        if not grouped._prune(c // g, k // g, g, dtype)(cfg):
            continue
        tried += 1
        with grouped.FAMILY.using(grouped.POLICY.forcing(grouped_fwd=cfg,
                                                         grouped_bwd_input=cfg)):
            out = grouped.conv2d(x, w, None, (s, s), (1, 1, 1, 1), (1, 1), g)
            assert rel_err(out, ref) < tol, cfg
            gx = grouped.conv2d_grad_input(dy, w, list(x.shape), (s, s), (1, 1, 1, 1), (1, 1),
                                           g)
            assert rel_err(gx, rx) < 4 * tol, cfg
    assert tried >= 3


def test_grouped_grad_weight_deterministic_cuda():
    x = torch.randn(32, 128, 56, 56, device="cuda").contiguous(memory_format=torch.channels_last)
    dy = torch.randn(32, 128, 56, 56, device="cuda").contiguous(memory_format=torch.channels_last)
    args = ([128, 4, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 32)
    a = torch.ops.fastconv.triton_grouped_conv2d_grad_weight(dy, x, *args)
    b = torch.ops.fastconv.triton_grouped_conv2d_grad_weight(dy, x, *args)
    assert torch.equal(a, b)


@pytest.mark.parametrize("algo", ["triton_igemm", "triton_depthwise", "triton_grouped"])
def test_index_past_int32(algo):
    """A tensor just over 2^31 elements: every offset must be formed in int64."""
    c, h = 16, 11586  # 16 * 11586^2 = 2_147_766_336 > 2^31
    assert c * h * h > 2**31
    torch.manual_seed(0)
    x = torch.randn(1, c, h, h, device="cuda", dtype=torch.float16)
    cg = {"triton_depthwise": 1, "triton_grouped": 4}.get(algo, c)
    w = (torch.randn(c, cg, 3, 3, device="cuda") / (3 * cg) ).to(torch.float16)
    out = fastconv.conv2d(x, w, None, 1, 1, 1, c // cg, algo=algo)
    ref = F.conv2d(x, w, None, 1, 1, 1, c // cg)
    # Compare the tail (beyond 2^31) and the head, in float32 to keep memory in check.
    for sl in (slice(0, 64), slice(h - 64, h)):
        assert rel_err(out[:, :, sl].float(), ref[:, :, sl].float()) < 1e-2
    assert not torch.isnan(out[:, -1]).any()
    del out, ref
    if algo in ("triton_depthwise", "triton_grouped"):
        dy = torch.randn_like(x)
        gx = getattr(torch.ops.fastconv, f"{algo}_conv2d_grad_input")(
            dy, w, list(x.shape), [1, 1], [1, 1, 1, 1], [1, 1], c // cg)
        rx = torch.nn.grad.conv2d_input(list(x.shape), w, dy, 1, 1, 1, c // cg)
        for sl in (slice(0, 64), slice(h - 64, h)):
            assert rel_err(gx[:, :, sl].float(), rx[:, :, sl].float()) < 1e-2


def test_depthwise_grad_weight_deterministic_cuda():
    x = torch.randn(32, 144, 56, 56, device="cuda")
    dy = torch.randn(32, 144, 56, 56, device="cuda")
    args = ([144, 1, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 144)
    a = torch.ops.fastconv.triton_depthwise_conv2d_grad_weight(dy, x, *args)
    b = torch.ops.fastconv.triton_depthwise_conv2d_grad_weight(dy, x, *args)
    assert torch.equal(a, b)


@pytest.mark.parametrize("algo,c,h,r,dtype,cl", [
    ("triton_depthwise", 144, 28, 3, torch.float32, False),   # rows kernel, NCHW
    ("triton_depthwise", 144, 28, 3, torch.bfloat16, True),   # rows kernel, NHWC
    ("triton_depthwise", 96, 28, 7, torch.float32, True),
    ("triton_depthwise", 64, 28, 31, torch.bfloat16, False),  # banded tensor-core kernel
    ("triton_igemm", 64, 28, 3, torch.bfloat16, True),
    ("triton_igemm", 256, 14, 1, torch.bfloat16, True),       # TMA plain-GEMM tile
    ("triton_grouped", 128, 28, 3, torch.bfloat16, True),
])
def test_repeated_calls_direct_launch(algo, c, h, r, dtype, cl):
    """The first call of a plan launches through Triton's JIT, later ones through the
    compiled kernel's own launcher (kernels/_common.Launch): every call, forward and both
    gradients, must give the first call's bits, and match F.conv2d."""
    torch.manual_seed(0)
    groups = c if algo == "triton_depthwise" else (32 if algo == "triton_grouped" else 1)
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(2, c, h, h, device="cuda", dtype=dtype).to(memory_format=fmt)
    w = torch.randn(c, c // groups, r, r, device="cuda", dtype=dtype).to(memory_format=fmt)
    x.requires_grad_(True)
    w.requires_grad_(True)
    dy = torch.randn(2, c, h, h, device="cuda", dtype=dtype).to(memory_format=fmt)
    runs = []
    for _ in range(4):
        y = fastconv.conv2d(x, w, None, 1, r // 2, 1, groups, algo=algo)
        gx, gw = torch.autograd.grad(y, (x, w), dy)
        runs.append((y.detach(), gx, gw))
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)
    ref = F.conv2d(x.double(), w.double(), None, 1, r // 2, 1, groups)
    rgx, rgw = torch.autograd.grad(ref, (x, w), dy.double())
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-3  # fp32: TF32 may be on
    for got, want in zip(runs[0], (ref, rgx, rgw)):
        err = (got.double() - want).norm() / want.norm()
        assert err < tol, err


@pytest.mark.parametrize("dtype,bias", [(torch.bfloat16, True), (torch.float32, False)])
def test_tma_tile_direct_launch(dtype, bias):
    """The TMA plain-GEMM tile (1x1 channels_last) launches directly from the second call
    on (host descriptors through the compiled launcher), bit for bit as the first call."""
    from fastconv.kernels import igemm

    tiles = igemm.FWD_CONFIGS_16 if dtype == torch.bfloat16 else igemm.FWD_CONFIGS_32
    tma_tile = next(cfg for cfg in tiles if cfg.get("KIND") == "tma")
    with igemm.FAMILY.using(igemm.POLICY.forcing(igemm_fwd16=tma_tile, igemm_fwd32=tma_tile)):
        torch.manual_seed(0)
        x = torch.randn(4, 256, 14, 14, device="cuda", dtype=dtype).to(
            memory_format=torch.channels_last)
        w = torch.randn(192, 256, 1, 1, device="cuda", dtype=dtype).to(
            memory_format=torch.channels_last)
        b = torch.randn(192, device="cuda", dtype=dtype) if bias else None
        outs = [igemm.conv2d(x, w, b, [1, 1], [0, 0, 0, 0], [1, 1], 1, "none")
                for _ in range(4)]
        made = [launch for plan in igemm.FAMILY.plans() for launch in plan.launches]
    tma = [launch for launch in made if launch.kernel is igemm._igemm_fwd_tma_kernel]
    assert len(tma) == 1 and tma[0].direct, "the TMA tile did not take the direct launch"
    for later in outs[1:]:
        assert torch.equal(outs[0], later)
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double())
    assert (outs[0].double() - ref).norm() / ref.norm() < 2e-2


# grad_weight tiles forced per case (the tuner would pick one of them): both kernels.
GROUPED_WGRAD_TILES = {
    "taps": dict(KIND="taps", GPT_X=1, BLOCK_Q=64, num_warps=4, num_stages=2),
    "tap": dict(KIND="tap", GPT_X=2, BLOCK_Q=64, num_warps=4, num_stages=3),
}


@pytest.mark.parametrize("algo,c,h,r,stride,dtype,cl,wgrad", [
    ("triton_depthwise", 96, 14, 3, 1, torch.float32, False, None),   # grad_weight "rows"
    ("triton_depthwise", 64, 14, 3, 2, torch.bfloat16, True, None),   # rows, tap-loop dx
    ("triton_depthwise", 32, 16, 9, 1, torch.bfloat16, True, None),   # grad_weight tap blocks
    ("triton_grouped", 128, 14, 3, 1, torch.bfloat16, True, "taps"),
    ("triton_grouped", 128, 14, 3, 2, torch.bfloat16, True, "tap"),   # phased grad_input
    ("triton_grouped", 128, 14, 3, 2, torch.float32, False, "taps"),
])
def test_converted_plans_launch_directly(algo, c, h, r, stride, dtype, cl, wgrad, tf32_flag):
    """Forward, grad_input and grad_weight plans of the depthwise and grouped families: after
    the first call (JIT launch, then the one-time check) every Launch of the plan holds a
    compiled runner, and the second call runs through those runners (counted), writing the
    first call's bits. A plan left on the JIT path fails here, not just runs slower; so
    does one left on Python's launcher where the native (C++) launch is available."""
    from fastconv.kernels import _common, depthwise, grouped

    if not _common.DIRECT_LAUNCH:
        pytest.skip("direct launch off (FASTCONV_DIRECT_LAUNCH=0 or triton < 3.2)")
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False  # fp32 exact enough for a tight tolerance
    mod = depthwise if algo == "triton_depthwise" else grouped
    # this test's plans only (a policy of its own), the grad_weight tile forced
    force = dict(grouped_bwd_weight=GROUPED_WGRAD_TILES[wgrad]) if wgrad else {}
    with mod.FAMILY.using(mod.POLICY.forcing(**force)):
        _check_plans_launch_directly(mod, c, h, r, stride, dtype, cl, algo)


def _check_plans_launch_directly(mod, c, h, r, stride, dtype, cl, algo):
    groups = c if algo == "triton_depthwise" else 32
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(2, c, h, h, device="cuda", dtype=dtype).to(memory_format=fmt)
    w = torch.randn(c, c // groups, r, r, device="cuda", dtype=dtype).to(memory_format=fmt)
    x.requires_grad_(True)
    w.requires_grad_(True)
    ho = (h + 2 * (r // 2) - r) // stride + 1
    dy = torch.randn(2, c, ho, ho, device="cuda", dtype=dtype).to(memory_format=fmt)

    def step():
        y = fastconv.conv2d(x, w, None, stride, r // 2, 1, groups, algo=algo)
        return (y.detach(), *torch.autograd.grad(y, (x, w), dy))

    first = step()
    plans = mod.FAMILY.plans()
    assert len(plans) == 3
    launches = [launch for plan in plans for launch in plan.launches]
    assert all(launch.direct for launch in launches), [
        (getattr(launch.kernel, "__name__", launch.kernel), launch.layout_ok, launch.compiled)
        for launch in launches]
    from fastconv.kernels import _common
    if _common.NATIVE_LAUNCH is not None:  # and from C++ (csrc/triton_launch.cpp)
        assert all(launch.native is not None for launch in launches), [
            getattr(launch.kernel, "__name__", launch.kernel) for launch in launches
            if launch.native is None]
    used = []

    def counted(runner, i):
        def run(*args):
            used.append(i)
            return runner(*args)
        return run

    for i, launch in enumerate(launches):
        launch.compiled = {key: counted(runner, i) for key, runner in launch.compiled.items()}
        if launch.native is not None:
            launch.native = counted(launch.native, i)
    second = step()
    assert sorted(set(used)) == list(range(len(launches)))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    ref = F.conv2d(x.double(), w.double(), None, stride, r // 2, 1, groups)
    rgx, rgw = torch.autograd.grad(ref, (x, w), dy.double())
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for got, want in zip(first, (ref, rgx, rgw)):
        assert rel_err(got, want) < tol


# --- The eager fast path on the GPU (was benchmarks/eager_check.py) -----------------------
EAGER_CASES = [  # (N, C, H, W), (K, C/g, R, S), stride, padding, groups
    ((2, 16, 9, 9), (32, 16, 3, 3), 1, 1, 1),
    ((2, 32, 8, 8), (32, 32, 1, 1), 1, 0, 1),
    ((1, 8, 11, 10), (16, 2, 3, 3), 2, 1, 4),
    ((2, 16, 9, 8), (16, 1, 3, 3), 1, 1, 16),
    ((1, 12, 10, 10), (24, 1, 5, 5), 2, 2, 12),
]


@pytest.mark.parametrize("act,dtype", [("none", torch.float32), ("silu", torch.float32),
                                       ("relu", torch.bfloat16)], ids=["fp32", "fp32_silu",
                                                                       "bf16_relu"])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", EAGER_CASES, ids=["dense3x3", "dense1x1", "grouped", "dw3x3",
                                                   "dw5x5_s2"])
def test_eager_fast_path_equals_the_ops(case, cl, act, dtype, tf32_flag):
    """Outputs and gradients through the eager fast path equal the same calls through the
    registered ops bit for bit, and F.conv2d (float64) within tolerance."""
    from fastconv import _eager

    torch.backends.cudnn.allow_tf32 = False
    xs, ws, st, pad, g = case
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(xs, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(ws, device="cuda", dtype=dtype) / (ws[1] * ws[2] * ws[3]) ** 0.5
    b = torch.randn(ws[0], device="cuda", dtype=dtype)
    gy, results = None, []
    try:
        for enabled in (True, False):
            _eager.ENABLED = enabled
            xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
            y = fastconv.conv2d(xr, wr, br, st, pad, 1, g, activation=act)
            gy = torch.randn_like(y) if gy is None else gy
            grads = torch.autograd.grad(y, (xr, wr, br), gy)
            with torch.no_grad():
                y_ng = fastconv.conv2d(x, w, b, st, pad, 1, g, activation=act)
            results.append((y.detach(), *grads, y_ng, type(y.grad_fn).__name__))
    finally:
        _eager.ENABLED = True
    fast, ops = results
    assert fast[5] == "Conv2dFunctionBackward" and ops[5] != fast[5]
    assert all(torch.equal(a, c) for a, c in zip(fast[:5], ops[:5]))
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    ref = fastconv._ops.apply_activation(F.conv2d(xr, wr, br, st, pad, 1, g), act)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for got, want in zip(fast[:4], (ref.detach(), *torch.autograd.grad(ref, (xr, wr, br),
                                                                       gy.double()))):
        assert rel_err(got, want) < tol


def test_eager_aligned_and_unaligned_inputs_alternate(tf32_flag):
    """The plans' direct launch keys compiled kernels by pointer alignment: an input 4 bytes
    off a 16-byte boundary, between aligned calls. (Strict fp32: TF32's 10-bit mantissa
    alone is ~5e-4 off.)"""
    torch.backends.cudnn.allow_tf32 = False
    xa = torch.randn(2, 16, 9, 9, device="cuda")
    wa = torch.randn(32, 16, 3, 3, device="cuda") / 12
    xo = torch.randn(xa.numel() + 1, device="cuda")[1:].view(xa.shape)
    xo.copy_(xa)
    for t in (xa, xo, xa, xo, xo):
        y = fastconv.conv2d(t, wa, None, 1, 1)
        assert rel_err(y, F.conv2d(t.double(), wa.double(), None, 1, 1)) < 1e-4


def test_native_launch_uses_torchs_current_stream():
    """The C++ launch (csrc/triton_launch.cpp) queues on the stream PyTorch has current:
    on a side stream held by a sleep, a conv launched after an in-place update of its
    input sees the update (on any other stream it would run at once, on the old input)."""
    from fastconv.kernels import _common

    if _common.NATIVE_LAUNCH is None:
        pytest.skip("no native launch here (FASTCONV_DIRECT_LAUNCH=0, triton < 3.5, or no driver)")
    torch.manual_seed(0)
    x = torch.randn(4, 64, 28, 28, device="cuda", dtype=torch.bfloat16)
    x_new = torch.randn_like(x)
    w = torch.randn(64, 64, 3, 3, device="cuda", dtype=torch.bfloat16) / 24
    for _ in range(3):  # plan and check, then native launches
        fastconv.conv2d(x, w, None, 1, 1, algo="triton_igemm")
    from fastconv.kernels import igemm
    launches = [launch for plan in igemm.FAMILY.plans() for launch in plan.launches]
    assert any(launch.native is not None for launch in launches)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        x.copy_(x_new)
        y = fastconv.conv2d(x, w, None, 1, 1, algo="triton_igemm")
    torch.cuda.synchronize()
    assert rel_err(y, F.conv2d(x_new.double(), w.double(), None, 1, 1)) < 2e-2


@pytest.mark.parametrize("algo,cin,cout,groups,k", [("triton_igemm", 32, 64, 1, 3),
                                                     ("triton_depthwise", 64, 64, 64, 3),
                                                     ("triton_grouped", 64, 64, 16, 3)])
@pytest.mark.parametrize("dtype,cl", [(torch.bfloat16, True), (torch.float32, False)])
def test_training_steps_run_their_autograd_in_cpp(monkeypatch, algo, cin, cout, groups, k, dtype,
                                                   cl):
    """A fastconv.nn.Conv2d training step on CUDA: once its plans run natively, the forward
    returns _C.NativeConv's C++ grad_fn and the backward runs the native grad plans (no
    Python); gradients (bias included) match cuDNN's on every step, and after an in-place
    weight update (the optimizer's) too."""
    from fastconv.kernels import _common

    if _common.NATIVE_LAUNCH is None:
        pytest.skip("no native launch here (FASTCONV_DIRECT_LAUNCH=0, triton < 3.5, or no driver)")
    from fastconv.kernels import _plan
    monkeypatch.setattr(_plan, "NATIVE_AUTOGRAD", True)
    # The native path runs only without poisoned outputs (the C++ plans do not poison), and
    # fp32 compares in full precision on both sides.
    monkeypatch.setattr(_common, "POISON", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    fmt = torch.channels_last if cl else torch.contiguous_format
    ref = torch.nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups).cuda().to(dtype)
    ref = ref.to(memory_format=fmt)
    mod = fastconv.nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, algo=algo).cuda()
    mod = mod.to(dtype).to(memory_format=fmt)
    mod.load_state_dict(ref.state_dict())
    family = {"triton_igemm": "igemm", "triton_depthwise": "depthwise",
              "triton_grouped": "grouped"}[algo]
    fam = __import__(f"fastconv.kernels.{family}", fromlist=["FAMILY"]).FAMILY
    names = []
    for step in range(6):
        x = torch.randn(2, cin, 12, 12, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
        x.requires_grad_()
        xr = x.detach().clone().requires_grad_()
        y, yr = mod(x), ref(xr)
        names.append(y.grad_fn.name())
        dy = torch.randn_like(y)
        y.backward(dy)
        yr.backward(dy)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        for got, want in ((y, yr), (x.grad, xr.grad), (mod.weight.grad, ref.weight.grad),
                          (mod.bias.grad, ref.bias.grad)):
            assert (got.float() - want.float()).norm() / want.float().norm() < tol, step
        with torch.no_grad():  # an optimizer step: in place, on both
            for p, q in ((mod.weight, ref.weight), (mod.bias, ref.bias)):
                p.sub_(0.01 * p.grad)
                q.sub_(0.01 * q.grad)
                p.grad = q.grad = None
    assert "NativeConv" in names[-1], names
    assert any(conv.has_grad_plans for conv in fam.native_convs.values())


@pytest.mark.parametrize("algo,cin,cout,groups", [("triton_igemm", 64, 256, 1),
                                                   ("triton_depthwise", 96, 96, 96),
                                                   ("triton_grouped", 128, 128, 32)])
def test_race_compiles_in_threads_and_remembers(tmp_path, monkeypatch, algo, cin, cout, groups):
    """settings.tune = "race" on this GPU and triton: the candidates compile in the tuner's
    thread pool (JITFunction.warmup), the race's winner runs correctly (forward and both
    gradients) and lands in the user's tile file, which a new process reads back."""
    import json

    from fastconv.kernels import _plan

    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    _plan.forget_disk()
    k = 3 if groups > 1 else 1
    x = torch.randn(4, cin, 20, 20, device="cuda", dtype=torch.bfloat16,
                    requires_grad=True).contiguous(memory_format=torch.channels_last)
    x.retain_grad()
    w = (torch.randn(cout, cin // groups, k, k, device="cuda", dtype=torch.bfloat16) * 0.1
         ).contiguous(memory_format=torch.channels_last).requires_grad_()
    try:
        with fastconv.settings.flags(tune="race"):
            y = fastconv.conv2d(x, w, padding=k // 2, groups=groups, algo=algo)
            y.float().square().sum().backward()
        ref_x = x.detach().clone().requires_grad_()
        ref_w = w.detach().clone().requires_grad_()
        ref = F.conv2d(ref_x, ref_w, padding=k // 2, groups=groups)
        ref.float().square().sum().backward()
        for got, want in ((y, ref), (x.grad, ref_x.grad), (w.grad, ref_w.grad)):
            err = (got.float() - want.float()).norm() / want.float().norm()
            assert err < 2e-2
        sources = _plan.tile_sources()
        assert sources and set(sources.values()) == {"tuned"}
        stored = json.loads((tmp_path / _plan.TUNER_FILE).read_text())
        assert set(stored) == set(sources)
        _plan.forget_disk()  # as a new process sees the file
        assert _plan._load_disk() == stored
    finally:
        _plan.forget_disk()


def test_every_family_runs_its_heuristic_tiles():
    """The default mode: the heuristic's tile for each op, nothing timed, correct."""
    from fastconv.kernels import _plan

    _plan.forget_disk()
    with fastconv.settings.flags(tune="heuristic", cache_dir="/nonexistent-fastconv-cache"):
        for algo, cin, cout, groups, k in [("triton_igemm", 64, 128, 1, 3),
                                           ("triton_depthwise", 96, 96, 96, 3),
                                           ("triton_grouped", 128, 128, 32, 3)]:
            for dtype, cl in [(torch.bfloat16, True), (torch.float32, False)]:
                fmt = torch.channels_last if cl else torch.contiguous_format
                x = torch.randn(2, cin, 14, 14, device="cuda", dtype=dtype).contiguous(
                    memory_format=fmt)
                w = (torch.randn(cout, cin // groups, k, k, device="cuda", dtype=dtype) * 0.1
                     ).contiguous(memory_format=fmt)
                y = fastconv.conv2d(x, w, padding=1, groups=groups, algo=algo)
                ref = F.conv2d(x.double(), w.double(), padding=1, groups=groups)
                assert (y.double() - ref).norm() / ref.norm() < 2e-2
    assert set(_plan.tile_sources().values()) <= {"heuristic", "shipped"}
    _plan.forget_disk()
