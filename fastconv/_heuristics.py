"""Thresholds behind algo="auto", named and in one place."""
from __future__ import annotations

from .spec import ConvSpec

# The direct kernel's register tile covers this many output channels (csrc/blocking.h).
DIRECT_MIN_OUT_CHANNELS_PER_GROUP = 8


def cpu_dense_choice(spec: ConvSpec) -> str:
    if spec.Kg >= DIRECT_MIN_OUT_CHANNELS_PER_GROUP:
        return "direct"
    return "im2col"
