"""fastconv.conv2d has F.conv2d's semantics on every CPU algorithm: the parametrized
matrix, a hypothesis property test, gradcheck, opcheck, torch.compile, bad input,
threads, concurrency, memory growth."""
from __future__ import annotations

import gc
import threading

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from helpers import check_against_torch, cpu_algos

DENSE_ALGOS = ["reference", "im2col", "direct"]
ALL_ALGOS = DENSE_ALGOS + ["depthwise"]


def rand(*shape, dtype=torch.float64, cl=False):
    t = torch.randn(*shape, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else t


CASES = [
    # (N, C, H, W, K, R, S, stride, padding, dilation, groups)
    (2, 3, 9, 8, 4, 3, 3, 1, 1, 1, 1),
    (1, 4, 10, 7, 6, 3, 2, 2, 0, 1, 2),
    (2, 4, 11, 11, 8, 5, 3, (2, 1), (2, 1), (1, 2), 1),
    (1, 6, 9, 9, 6, 3, 3, 1, "same", 2, 3),
    (1, 4, 8, 9, 4, 4, 2, 1, "same", (2, 3), 1),   # even kernels: asymmetric 'same'
    (2, 5, 7, 7, 3, 1, 1, 1, "valid", 1, 1),
    (1, 16, 6, 6, 24, 1, 1, 2, 0, 1, 1),
    (1, 3, 12, 12, 10, 7, 7, 2, 3, 1, 1),
    (0, 4, 8, 8, 4, 3, 3, 1, 1, 1, 1),             # empty batch
    (1, 8, 9, 9, 16, 3, 3, 1, 1, 1, 8),            # depthwise, multiplier 2
    (2, 6, 8, 7, 6, 3, 3, 2, (1, 0), 1, 6),        # depthwise stride 2
    (1, 20, 6, 5, 17, 2, 3, 1, (0, 1), 1, 1),       # odd channel counts
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
@pytest.mark.parametrize("algo", ALL_ALGOS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch(case, algo, layout, dtype):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    torch.manual_seed(hash((case, algo, layout, str(dtype))) % 2**31)
    x = rand(n, c, h, w, dtype=dtype, cl=layout == "nhwc")
    wt = rand(k, c // groups, r, s, dtype=dtype)
    b = rand(k, dtype=dtype)
    _, _, spec = fastconv.conv_spec(x, wt, b, stride, padding, dilation, groups)
    if algo not in cpu_algos(spec):
        with pytest.raises(ValueError, match="groups == in_channels"):
            fastconv.conv2d(x, wt, b, stride, padding, dilation, groups, algo=algo)
        return
    check_against_torch(x, wt, b, algo=algo, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)


@pytest.mark.parametrize("algo", ALL_ALGOS)
@pytest.mark.parametrize("activation", ["relu", "relu6", "silu", "gelu"])
def test_fused_activation(algo, activation):
    torch.manual_seed(1)
    groups = 4 if algo == "depthwise" else 1
    x = rand(2, 4, 7, 7) * 3
    w = rand(4, 4 // groups, 3, 3)
    check_against_torch(x, w, rand(4), algo=algo, padding=1, groups=groups, activation=activation)


@pytest.mark.parametrize("algo", ALL_ALGOS)
def test_unbatched_and_no_bias(algo):
    torch.manual_seed(2)
    groups = 3 if algo == "depthwise" else 1
    x = rand(3, 8, 9)
    w = rand(6, 3 // groups, 3, 3)
    out = check_against_torch(x, w, None, algo=algo, padding=1, groups=groups)
    assert out.shape == (6, 8, 9)


@pytest.mark.parametrize("algo", ALL_ALGOS)
def test_noncontiguous_inputs(algo):
    torch.manual_seed(3)
    groups = 4 if algo == "depthwise" else 1
    x = rand(2, 4, 16, 18)[:, :, ::2, 1::2]          # strided view
    # Non-contiguous weights too: every other filter, or one slice of the channel axis.
    w = rand(8, 4, 3, 3)[::2] if groups == 1 else rand(4, 2, 3, 3)[:, :1]
    assert not x.is_contiguous() and not w.is_contiguous()
    check_against_torch(x, w, None, algo=algo, padding=1, groups=groups)


@pytest.mark.parametrize("algo", ALL_ALGOS)
def test_gradcheck(algo):
    torch.manual_seed(4)
    groups = 2 if algo == "depthwise" else 1
    x = rand(1, 2, 5, 6).requires_grad_()
    w = rand(4, 2 // groups, 2, 3).requires_grad_()
    b = rand(4).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, b: fastconv.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                                        groups=groups, algo=algo), (x, w, b))


@pytest.mark.parametrize("algo", ALL_ALGOS)
@pytest.mark.parametrize("activation", ["none", "silu"])
def test_opcheck(algo, activation):
    torch.manual_seed(5)
    groups = 2 if algo == "depthwise" else 1
    x = rand(2, 2, 6, 6).requires_grad_()
    w = rand(4, 2 // groups, 3, 3).requires_grad_()
    b = rand(4).requires_grad_()
    op = getattr(torch.ops.fastconv, f"{algo}_conv2d")
    args = (x, w, b, [1, 1], [1, 0, 1, 1], [1, 1], groups, activation)
    torch.library.opcheck(op, args)
    gin = getattr(torch.ops.fastconv, f"{algo}_conv2d_grad_input")
    gw = getattr(torch.ops.fastconv, f"{algo}_conv2d_grad_weight")
    y = op(*args).detach()
    dy = torch.randn_like(y)
    torch.library.opcheck(gin, (dy, w.detach(), list(x.shape), [1, 1], [1, 0, 1, 1], [1, 1], groups))
    torch.library.opcheck(gw, (dy, x.detach(), list(w.shape), [1, 1], [1, 0, 1, 1], [1, 1], groups))


def test_flop_counter_sees_ops():
    from torch.utils.flop_counter import FlopCounterMode

    x = rand(2, 4, 8, 8, dtype=torch.float32).requires_grad_()
    w = rand(6, 4, 3, 3, dtype=torch.float32).requires_grad_()
    with FlopCounterMode(display=False) as ours:
        fastconv.conv2d(x, w, padding=1, algo="im2col").sum().backward()
    with FlopCounterMode(display=False) as ref:
        F.conv2d(x, w, padding=1).sum().backward()
    assert ours.get_total_flops() == ref.get_total_flops() > 0


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def f(x, w, b):
        y = fastconv.conv2d(x, w, b, padding="same", algo="auto", activation="relu")
        return fastconv.conv2d(y, w, None, stride=2, algo="im2col").sum()

    x = rand(2, 4, 8, 8, dtype=torch.float32).requires_grad_()
    w = rand(4, 4, 3, 3, dtype=torch.float32).requires_grad_()
    b = rand(4, dtype=torch.float32).requires_grad_()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, w, b)
    out.backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = b.grad = None
    ref = f(x, w, b)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)


@pytest.mark.parametrize("algo", ALL_ALGOS)
def test_thread_count_does_not_change_results(algo):
    torch.manual_seed(6)
    groups = 8 if algo == "depthwise" else 1
    x = rand(3, 8, 13, 11, dtype=torch.float32)
    w = rand(8, 8 // groups, 3, 3, dtype=torch.float32).requires_grad_()
    xs = x.requires_grad_()
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xs.grad = w.grad = None
            y = fastconv.conv2d(xs, w, padding=1, groups=groups, algo=algo)
            y.backward(torch.ones_like(y))
            results.append((y.detach(), xs.grad.clone(), w.grad.clone()))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_concurrent_python_threads():
    torch.manual_seed(7)
    problems = []
    for i in range(6):
        algo = ALL_ALGOS[i % 4]
        groups = 4 if algo == "depthwise" else 1
        x = rand(2, 4, 10, 10, dtype=torch.float32)
        w = rand(4, 4 // groups, 3, 3, dtype=torch.float32)
        problems.append((algo, x, w, groups, F.conv2d(x, w, padding=1, groups=groups)))
    errors = []

    def work(p):
        algo, x, w, groups, ref = p
        for _ in range(5):
            out = fastconv.conv2d(x, w, padding=1, groups=groups, algo=algo)
            if not torch.allclose(out, ref, rtol=1e-4, atol=1e-4):
                errors.append(algo)

    threads = [threading.Thread(target=work, args=(p,)) for p in problems]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a conv call hung"
    assert not errors, errors


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_memory_does_not_grow():
    """10,000 forward+backward calls across algorithms: resident memory stays flat."""
    torch.manual_seed(8)
    x = rand(1, 4, 6, 6, dtype=torch.float32).requires_grad_()
    w = rand(4, 4, 3, 3, dtype=torch.float32).requires_grad_()
    wd = rand(4, 1, 3, 3, dtype=torch.float32).requires_grad_()

    def step(i):
        if i % 3 == 2:
            y = fastconv.conv2d(x, wd, padding=1, groups=4, algo="depthwise")
        else:
            y = fastconv.conv2d(x, w, padding=1, algo=("im2col", "direct")[i % 3])
        y.sum().backward()

    for i in range(500):
        step(i)
    gc.collect()
    before = _rss_kb()
    for i in range(10_000):
        step(i)
    gc.collect()
    grown = _rss_kb() - before
    assert grown < 20_000, f"resident memory grew by {grown} KiB over 10,000 calls"


# Hypothesis: random valid configurations on every applicable algorithm.
@st.composite
def conv_problems(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans())
    cg = 1 if depthwise else draw(st.integers(1, 3))
    c = cg * groups if not depthwise else groups * draw(st.integers(1, 2))
    if depthwise:
        groups = c
    k = groups * draw(st.integers(1, 3))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    same = draw(st.booleans())
    stride = (1, 1) if same else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = "same" if same else (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    pad_hw = (0, 0) if same else padding
    min_h = max(1, dil[0] * (r - 1) + 1 - 2 * pad_hw[0])
    min_w = max(1, dil[1] * (s - 1) + 1 - 2 * pad_hw[1])
    h = draw(st.integers(min_h, min_h + 6))
    w = draw(st.integers(min_w, min_w + 6))
    n = draw(st.integers(0, 2))
    layout = draw(st.sampled_from(["nchw", "nhwc"]))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(n=n, c=c, h=h, w=w, k=k, r=r, s=s, stride=stride, padding=padding, dilation=dil,
                groups=groups, layout=layout, bias=bias, seed=seed)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_problems())
def test_property_random_configs(p):
    torch.manual_seed(p["seed"])
    x = rand(p["n"], p["c"], p["h"], p["w"], cl=p["layout"] == "nhwc")
    w = rand(p["k"], p["c"] // p["groups"], p["r"], p["s"])
    b = rand(p["k"]) if p["bias"] else None
    kw = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"], groups=p["groups"])
    _, _, spec = fastconv.conv_spec(x, w, b, **kw)
    algos = cpu_algos(spec)
    assert "im2col" in algos and "direct" in algos
    for algo in algos:
        check_against_torch(x, w, b, algo=algo, **kw)
