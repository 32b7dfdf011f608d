"""The CPU algorithms (C++ in csrc/), registered once."""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the ops into torch.ops.fastconv)
from ._ops import register_family
from .registry import Algorithm, register
from .spec import ConvSpec

_DTYPES = (torch.float32, torch.float64)


def _depthwise_only(spec: ConvSpec):
    if spec.is_depthwise:
        return None
    return (f"algo='depthwise' needs groups == in_channels (depthwise, any channel multiplier); "
            f"this conv has in_channels={spec.C}, out_channels={spec.K}, groups={spec.groups}")


for _op in ("reference", "im2col", "direct", "depthwise"):
    register_family(_op)


# The depthwise kernels' plain loop nest (forward only), kept reachable for tests.
@torch.library.register_fake("fastconv::depthwise_naive_conv2d")
def _fake_depthwise_naive(input, weight, bias, stride, padding, dilation, groups, activation="none"):
    from ._ops import output_memory_format, output_size

    size = output_size(input.shape, weight.shape, stride, padding, dilation)
    return input.new_empty(size).contiguous(memory_format=output_memory_format(input, weight))


register(Algorithm(
    name="reference", op="reference", devices=("cpu",), dtypes=_DTYPES, public=False,
    summary="the plain seven-loop nest, no blocking (the baseline kernels are checked against)",
    constraints="any conv2d"))
register(Algorithm(
    name="im2col", op="im2col", devices=("cpu",), dtypes=_DTYPES,
    summary="our im2col into a bounded column buffer, then a GEMM per tile (ATen BLAS)",
    constraints="any conv2d; workspace bounded (fastconv.im2col_workspace_bytes)"))
register(Algorithm(
    name="direct", op="direct", devices=("cpu",), dtypes=_DTYPES,
    summary="no workspace; weights packed 8 output channels innermost, AVX2 FMA register tile",
    constraints="any conv2d"))
register(Algorithm(
    name="depthwise", op="depthwise", devices=("cpu",), dtypes=_DTYPES,
    summary="direct depthwise, vectorized over channels (NHWC) or pixels (NCHW)",
    constraints="groups == in_channels, any channel multiplier", applicable=_depthwise_only))
