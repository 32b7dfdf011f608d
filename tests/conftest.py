import os
import sys

import pytest
import torch

import fastconv


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (run on the GPU machine)")
    config.addinivalue_line("markers", "slow: long-running; still part of the full suite")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _set_triton_poison(on: bool) -> None:
    # The Triton kernels read FASTCONV_POISON when fastconv.kernels._common is imported
    # (lazily, on first use: importing it here would fix TRITON_INTERPRET too early).
    common = sys.modules.get("fastconv.kernels._common")
    if common is not None:
        common.set_debug_poison(on)


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every kernel output starts as NaN, so an unwritten element fails the test."""
    fastconv._C.set_debug_poison(True)
    os.environ["FASTCONV_POISON"] = "1"
    _set_triton_poison(True)
    yield
    fastconv._C.set_debug_poison(False)
    os.environ.pop("FASTCONV_POISON", None)
    _set_triton_poison(False)
