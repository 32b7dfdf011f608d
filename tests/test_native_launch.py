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
    with pytest.raises(RuntimeError, match="dtype slot"):
        _C.NativePlan([((2, 3), False, 5)], [(launch, [0, 3])], 3)
    with pytest.raises(RuntimeError, match="channels_last needs 4-D"):
        _C.NativePlan([((2, 3), True, 0)], [(launch, [0, 3])], 3)
    plan = _C.NativePlan([((2, 3), False, torch.float64)], [(launch, [0, 3])], 3)
    assert plan(torch.randn(2), torch.randn(2)) is None
    assert plan(torch.randn(2), torch.randn(2), torch.randn(4)[::2]) is None
