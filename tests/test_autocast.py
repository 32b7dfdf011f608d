"""Autocast: fastconv's ops, fastconv.conv2d and the modules return what F.conv2d returns
under torch.autocast (fastconv/_autocast.py). CPU here; CUDA on the GPU machine."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import registry


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ref(x, w, b, **kw):
    """F.conv2d in float64 on the bf16-rounded operands (what both sides compute from)."""
    r = lambda t: None if t is None else t.to(torch.bfloat16).double()  # noqa: E731
    return F.conv2d(r(x), r(w), r(b), **kw)


CPU_ALGOS = [a.name for a in registry.algorithms("cpu", include_internal=True) if "cpu" in a.devices]


@pytest.mark.parametrize("algo", CPU_ALGOS)
def test_cpu_bf16_autocast_matches_f_conv2d_dtype(algo):
    torch.manual_seed(0)
    groups = 4 if algo == "depthwise" else 1
    x = torch.randn(2, 4, 9, 9)
    w = torch.randn(8, 4 // groups, 3, 3)
    b = torch.randn(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.conv2d(x, w, b, padding=1, groups=groups)
        got = fastconv.conv2d(x, w, b, padding=1, groups=groups, algo=algo)
        op = registry.get(algo).forward(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], groups, "none")
    assert want.dtype == got.dtype == op.dtype == torch.bfloat16
    ref = _ref(x, w, b, padding=1, groups=groups)
    # fastconv: a float32 conv of the bf16-rounded operands, rounded once to bf16.
    torch.testing.assert_close(got.double(), ref, atol=0.05, rtol=1e-2)
    torch.testing.assert_close(op, got)
    assert got.abs().max() > 0


def test_cpu_autocast_module_mixed_dtypes_and_backward():
    """A bf16 activation (what the layer before returns under autocast) into a float32
    module, as in a real network; gradients reach the float32 parameters."""
    torch.manual_seed(0)
    conv = fastconv.nn.Conv2d(4, 6, 3, padding=1)
    ref = torch.nn.Conv2d(4, 6, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 8, 8).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = conv(x), ref(x)
        fused = fastconv.nn.Conv2d(4, 6, 3, padding=1, activation="relu")(x)
    assert y.dtype == y_ref.dtype == fused.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), atol=0.1, rtol=2e-2)
    assert (fused >= 0).all()
    y.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert conv.weight.grad.abs().sum() > 0


def test_autocast_leaves_float64_and_disabled_regions_alone():
    x, w = torch.randn(1, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.conv2d(x, w).dtype == fastconv.conv2d(x, w).dtype == torch.float64
        with torch.autocast("cpu", enabled=False):
            assert fastconv.conv2d(x.float(), w.float()).dtype == torch.float32
    # Outside autocast nothing changes.
    assert fastconv.conv2d(x.float(), w.float()).dtype == torch.float32


def test_autocast_under_torch_compile():
    conv = fastconv.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 8, 8)

    def f(t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return conv(t)

    out = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), f(x).float(), atol=0.05, rtol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_matches_f_conv2d_dtype(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 12, 12, device="cuda")
    w = torch.randn(32, 16, 3, 3, device="cuda")
    conv = fastconv.nn.Conv2d(16, 16, 3, padding=1, groups=16, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        want = F.conv2d(x, w, padding=1)
        got = fastconv.conv2d(x, w, padding=1)
        dw = conv(x)
    assert want.dtype == got.dtype == dw.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=2e-2)
