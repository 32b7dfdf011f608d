"""Thresholds behind algo="auto", named and in one place."""
from __future__ import annotations

from .spec import ConvSpec

# The direct kernel's register tile covers this many output channels (csrc/blocking.h,
# kDirectOcBlock): below it, lanes of every weight vector are zero padding. Measured
# (1 thread, CPU time, AVX2 kernel; AVX2 FMA peak measured 111 GFLOP/s per core):
# Kg=16 73 GFLOP/s, Kg=8 35-49, Kg=4 12-15 (3x3, 128 ch, 28x28, groups 8/16/32);
# dense 3x3 layers with Kg >= 24 run at 53-84. 1x1 stride-1 convs are a plain GEMM
# and do not reach here (registry.choose sends them to im2col: direct measured
# 30-46 GFLOP/s on 64->256 56x56, well below a GEMM).
DIRECT_MIN_OUT_CHANNELS_PER_GROUP = 8


def cpu_dense_choice(spec: ConvSpec) -> str:
    if spec.Kg >= DIRECT_MIN_OUT_CHANNELS_PER_GROUP:
        return "direct"
    return "im2col"
