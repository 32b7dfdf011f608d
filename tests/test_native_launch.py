"""csrc/triton_launch.cpp on a machine without a GPU: the native launch and plan objects
check what they are given, and decline (launch nothing, return False / None) for tensors
they have no compiled kernel for. The launches themselves run in tests/test_triton_gpu.py."""
import pytest
import torch

from fastconv import _C

SCRATCH = [("nullptr", 0), ("nullptr", 0)]


def test_driver_error_is_a_reason_or_empty():
    assert isinstance(_C.cuda_driver_error(), str)


@pytest.mark.parametrize("params,match", [
    ([("bf16", 1.0)], "parameter type bf16"),
    ([("tensor", 2)], "tensor parameter 2 of 2"),
    ([("i32", 2**40)], "does not fit"),
])
def test_native_launch_rejects_bad_parameters(params, match):
    with pytest.raises(RuntimeError, match=match):
        _C.NativeLaunch([1, 1, 1], 2, params)


def test_native_launch_checks_grid_and_variants():
    with pytest.raises(RuntimeError, match="3-D grid"):
        _C.NativeLaunch([1, 1], 1, [("tensor", 0)])
    launch = _C.NativeLaunch([4, 1, 1], 2, [("tensor", 0), ("i32", 7), ("fp32", 0.5),
                                            ("tensor", 1), *SCRATCH])
    with pytest.raises(RuntimeError, match="every tensor's alignment"):
        launch.add_variant(0, [True], [torch.float32], 0, 128, 0)
    with pytest.raises(RuntimeError, match="block size"):
        launch.add_variant(0, [True, True], [torch.float32] * 2, 0, 4096, 0)
    assert launch.variants == 0
    # no variant, CPU tensors, a wrong count or a non-tensor: declined, nothing launched
    a, b = torch.randn(8), torch.randn(8)
    assert launch(a, b) is False
    assert launch(a) is False
    assert launch(a, 3) is False


def test_native_plan_checks_slots_and_declines_cpu_tensors():
    launch = _C.NativeLaunch([1, 1, 1], 2, [("tensor", 0), ("tensor", 1), *SCRATCH])
    with pytest.raises(RuntimeError, match="slot 4 of 4"):
        _C.NativePlan([((2, 3), False, 0)], [(launch, [0, 4])], 3)
    with pytest.raises(RuntimeError, match="dtype of slot 5 before"):
        _C.NativePlan([((2, 3), False, 5)], [(launch, [0, 3])], 3)
    with pytest.raises(RuntimeError, match="channels_last needs 4-D"):
        _C.NativePlan([((2, 3), True, 0)], [(launch, [0, 3])], 3)
    with pytest.raises(RuntimeError, match="not a permutation"):
        _C.NativePlan([("copy", 1, (0, 0, 1, 2))], [(launch, [0, 3])], 3)
    with pytest.raises(RuntimeError, match="before it exists"):
        _C.NativePlan([("copy", 3, (0, 1))], [(launch, [0, 3])], 3)
    with pytest.raises(RuntimeError, match="result order"):
        _C.NativePlan([((2, 3), False, 0)], [(launch, [0, 3])], 3, [1, 1])
    plan = _C.NativePlan([("copy", 1, (1, 0))], [(launch, [0, 3])], 3, [1, 0])
    assert plan(torch.randn(2), torch.randn(2, 3)) is None
    plan = _C.NativePlan([((2, 3), False, torch.float64)], [(launch, [0, 3])], 3)
    assert plan(torch.randn(2), torch.randn(2)) is None
    assert plan(torch.randn(2), torch.randn(2), torch.randn(4)[::2]) is None


def _declining_conv(calls):
    """A NativeConv whose native plan declines CPU tensors: every call takes its Python
    fallbacks (F.conv2d and convolution_backward), which record what they were asked."""
    launch = _C.NativeLaunch([1, 1, 1], 2, [("tensor", 0), ("tensor", 1), *SCRATCH])
    plan = _C.NativePlan([((1,), False, 0)], [(launch, [0, 3])], 3)

    def forward(x, w, b):
        calls.append("forward")
        return torch.nn.functional.conv2d(x, w, b, padding=1)

    def backward(dy, x, w, need_in, need_w):
        calls.append(("backward", need_in, need_w, torch.is_grad_enabled()))
        gi, gw, _ = torch.ops.aten.convolution_backward(  # differentiable under create_graph
            dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [need_in, need_w, False])
        return gi, gw
    return _C.NativeConv(plan, forward, backward), plan


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_native_conv_autograd_matches_conv2d(bias, needs):
    """The C++ autograd of a native training call (kernels/_plan.Family.conv2d_train), through
    its Python fallbacks: gradients as F.conv2d's, only those asked for computed."""
    calls = []
    conv, _ = _declining_conv(calls)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=needs[0])
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=needs[1])
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    out = conv(x, w, b)
    assert out.grad_fn is not None and "NativeConv" in out.grad_fn.name()
    ref = torch.nn.functional.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    dy = torch.randn_like(out)
    leaves = [t for t in (x, w, b) if t is not None and t.requires_grad]
    got = torch.autograd.grad(out, leaves, dy)
    want = torch.autograd.grad(ref, leaves, dy)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)
    assert calls == ["forward", ("backward", needs[0], needs[1], False)]
    assert not conv.has_grad_plans


def test_native_conv_grad_plans_that_decline_fall_back():
    calls = []
    conv, plan = _declining_conv(calls)
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, requires_grad=True)
    out = conv(x, w, None)
    dy = torch.randn_like(out)
    conv.set_grad_plans(plan, plan, dy)
    assert conv.has_grad_plans
    gx, gw = torch.autograd.grad(out, (x, w), dy)
    assert calls == ["forward", ("backward", True, True, False)]
    ref = torch.autograd.grad(torch.nn.functional.conv2d(x, w, padding=1), (x, w), dy)
    torch.testing.assert_close(gx, ref[0])
    torch.testing.assert_close(gw, ref[1])


def test_native_conv_double_backward_and_saved_tensor_checks():
    calls = []
    conv, _ = _declining_conv(calls)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    out = conv(x, w, None)
    (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    assert calls[-1] == ("backward", True, False, True)  # create_graph: the ops, grad mode on
    (gw2,) = torch.autograd.grad(gx.sum(), w)
    ref_out = torch.nn.functional.conv2d(x, w, padding=1)
    (ref_gx,) = torch.autograd.grad(ref_out.square().sum(), x, create_graph=True)
    (ref_gw2,) = torch.autograd.grad(ref_gx.sum(), w)
    torch.testing.assert_close(gw2, ref_gw2)
    # an input changed in place after the forward: autograd's version check, not garbage
    out = conv(x.clone(), w, None)
    with torch.no_grad():
        w.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_plan_whose_steps_cpp_refuses_stays_in_python(monkeypatch):
    """A Steps that _C.NativePlan refuses (a fastconv bug, not the caller's) leaves the plan on
    its Python run with a warning, instead of failing the call that tried to make it native."""
    from fastconv.kernels import _common, _plan

    class FakeLaunch:  # what Plan._make_native reads: the Launch's C++ form
        native = _C.NativeLaunch([1, 1, 1], 2, [("tensor", 0), ("tensor", 1)])

    monkeypatch.setattr(_common, "NATIVE_LAUNCH", _C.NativeLaunch)
    steps = _plan.Steps(buffers=(((2,), False, 0),), launches=((FakeLaunch(), (0, 7)),), result=3)
    plan = _plan.Plan(lambda a, b: a + b, steps=steps)
    a, b = torch.randn(2), torch.randn(2)
    with pytest.warns(RuntimeWarning, match="slot 7 of 4"):
        torch.testing.assert_close(plan(a, b), a + b)
    assert plan.native is None
    torch.testing.assert_close(plan(a, b), a + b)  # no second try, no second warning
