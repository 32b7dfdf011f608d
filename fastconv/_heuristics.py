"""Thresholds behind algo="auto", named and in one place."""
from __future__ import annotations

from .spec import ConvSpec

# Measured with `fastconv bench` on this project's 2-core Xeon (AVX2 kernels, 2 threads;
# benchmarks/results/cpu-xeon-2c/): on dense convs (groups == 1) direct takes 1.2-2.7x
# im2col's time on every ResNet-50 / MobileNetV2 layer with many input channels, 3x3 included
# (im2col's GEMM is MKL, which uses AVX-512 here; direct is AVX2 by design); on the stems
# (3 input channels) the two are within 12% either way (7x7/2 0.92x, 3x3/2 0.88x, ConvNeXt's
# 4x4/4 1.12x of im2col's time). On grouped convs im2col runs one thin GEMM per group, and
# direct wins: ResNeXt-50 g=32 3x3 at 14^2 and 7^2 took 0.56x and 0.61x of im2col's time.
DIRECT_MIN_GROUPS = 2


def cpu_dense_choice(spec: ConvSpec) -> str:
    """im2col or direct for a non-depthwise CPU conv."""
    return "direct" if spec.groups >= DIRECT_MIN_GROUPS else "im2col"


# CUDA, grouped (not depthwise): triton_grouped's block-diagonal tile against
# triton_igemm's per-group GEMM. Measured on the H200 (ResNeXt-50 g=32, batch 32, NHWC,
# bf16 and TF32; dev/triton/grouped_tiles.py): triton_grouped took 1/6-1/12 of igemm's time
# at 4 and 8 channels per group and 1/1.4-1/2 at 16 and 32, forward and grad_input alike.
# Wider groups fill igemm's tiles; 32 is the widest measured (triton_grouped itself takes
# up to 64: kernels/__init__.py).
GROUPED_AUTO_MAX_WIDTH = 32


def cuda_grouped_choice(spec: ConvSpec) -> str:
    """triton_grouped or triton_igemm for a non-depthwise CUDA conv."""
    narrow = spec.Cg <= GROUPED_AUTO_MAX_WIDTH and spec.Kg <= GROUPED_AUTO_MAX_WIDTH
    if spec.groups > 1 and narrow:
        return "triton_grouped"
    return "triton_igemm"
