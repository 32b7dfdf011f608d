"""Thresholds behind algo="auto", named and in one place."""
from __future__ import annotations

from .spec import ConvSpec

# Measured with `fastconv bench` on this project's 2-core Xeon (AVX2 kernels, 2 threads;
# benchmarks/results/cpu-xeon-2c/full): direct takes 1.2-2.7x im2col's time on every
# ResNet-50 / MobileNetV2 layer with many input channels, 3x3 included (im2col's GEMM is
# MKL, which uses AVX-512 here; direct is AVX2 by design). Direct wins only on the strided
# stems, where im2col's reduction (C/g)*R*S is too short for an efficient GEMM:
# 7x7/2 3->64 224^2 0.92x, 3x3/2 3->32 224^2 0.88x of im2col's time.
DIRECT_MAX_IN_CHANNELS_PER_GROUP = 4
DIRECT_MIN_STRIDE = 2


def cpu_dense_choice(spec: ConvSpec) -> str:
    if spec.Cg <= DIRECT_MAX_IN_CHANNELS_PER_GROUP and min(spec.stride) >= DIRECT_MIN_STRIDE:
        return "direct"
    return "im2col"
