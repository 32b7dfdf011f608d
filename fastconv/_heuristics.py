"""Thresholds behind algo="auto", named and in one place."""
from __future__ import annotations

import torch

from . import _C
from .spec import ConvSpec

# CPU, not depthwise: im2col (our column copy + MKL's GEMM) or direct (our tiles). Measured on
# this project's 2-core Sapphire Rapids Xeon (AVX-512; dev/cpu/vs_onednn.py, 1 thread, batch 1
# and 8, NCHW and channels_last, ratios against oneDNN in one run):
# - 1x1 convs are one GEMM, and a GEMM beats direct's conv tiles there (direct 0.3-1.0x of
#   oneDNN, im2col 0.5-1.2x): im2col, which calls MKL's sgemm directly (no copy at stride 1).
#   Our packed AVX-512 GEMM (csrc/pointwise_gemm_avx512.cpp) on cached weight panels runs
#   168-203 GFLOP/s on ResNet-50's 1x1 layers (1 thread, 70-82% of the FMA peak) against MKL's
#   126-207 on the same matrices (7x7 planes 168-182 against 126-146), so fastconv.nn.Conv2d
#   runs it at inference (im2col's packed path, fastconv/_cpu.py _pointwise_gemm_packs).
#   Functional calls on few pixels run it too, each task packing its panel in registers
#   (im2col.cpp; where, in csrc/blocking.h kGemmAvx512UnpackedMaxPixels): channels_last
#   layers up to 1568 pixels 0.92-1.51x of oneDNN where MKL took 0.61-0.98x
#   (dev/cpu/results/gemm1x1).
# - Stems (input channels not a multiple of 16: the general direct tile) on 7x7/2: direct
#   1.3-1.9x of oneDNN in NCHW and 0.7-0.8x in NHWC, im2col 0.6-1.1x / 0.6x: direct.
# - Other dense kxk convs run direct's AVX-512 tiles over a padded copy of the input: 0.8-1.0x
#   of oneDNN where the output has at least DIRECT_MIN_PIXELS pixels (ResNet-50 layers 1-3,
#   layer 4 at batch 8), where im2col took 0.6-0.9x; on ResNet-50's 7x7 layer 4 at batch 1
#   (49 pixels: 2 row tiles of 7 per image, 4 passes over the weights) im2col 1.0-1.1x, direct
#   0.6-0.7x: im2col.
# - Grouped convs: direct (im2col runs one thin GEMM per group), whose AVX-512 tiles put
#   narrow groups across lanes (ResNeXt g=32). ResNeXt-50's g=32 layers, 1 thread, N=1 and 8,
#   both layouts: im2col 0.35-0.42x of oneDNN (geomean), direct 0.86-1.24x forward and
#   0.96-1.40x backward (grad_input + grad_weight).
DIRECT_MIN_GROUPS = 2
# csrc/blocking.h's kDirectBlockedMinPixels (direct's grad_input uses the same cut).
DIRECT_MIN_PIXELS = _C.blocking()["direct_blocked_min_pixels"]


@torch.compiler.assume_constant_result
def _cpu_isa() -> str:
    """The ISA the CPU kernels use now (a constant to torch.compile: read while tracing)."""
    return _C.cpu_isa()


def cpu_dense_choice(spec: ConvSpec) -> str:
    """im2col or direct for a non-depthwise CPU conv."""
    if spec.groups >= DIRECT_MIN_GROUPS:
        return "direct"
    # direct's dense tiles beat MKL only with AVX-512 float32 (on AVX2 they took 1.2-2.7x
    # im2col's time, float64 runs the portable path).
    if spec.R * spec.S == 1 or spec.dtype != torch.float32 or _cpu_isa() != "avx512":
        return "im2col"
    if spec.C % 16:  # stems: few input channels
        return "direct"
    return "direct" if spec.N * spec.Ho * spec.Wo >= DIRECT_MIN_PIXELS else "im2col"


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
