"""Direct depthwise convolution in Triton (algo="triton_depthwise"): groups == C_in, channel
multiplier MULT = K / C >= 1, kernels 1x1 .. 31x31, any stride/padding/dilation.

    y[n, k, oh, ow] = sum_{r,s} x[n, k // MULT, oh*sh - pt + r*dh, ow*sw - pl + s*dw] * w[k, 0, r, s]

Two direct kernels race in the tile tuner:
  * the tap loop (`_dw_fwd_kernel`): a program owns BLOCK_H x BLOCK_W output pixels times
    BLOCK_C channels and loops over the taps; the shifted input tiles overlap, so after the
    first tap they come from L1/L2 and DRAM sees each input byte about once -- but every
    tap is an L1 load per output (R*S of them), which bounds it by L1, not by DRAM or FMAs;
  * the row-reuse kernel (`_dw_fwd_rows_kernel`): a program owns ROWS output rows in
    registers and loads each (shifted) input row once for all the output rows it feeds,
    so an output costs about S*(ROWS + R - 1)/ROWS loads instead of R*S.
The tile shape picks the layout: NCHW tiles are wide in W with few channels (rows are
contiguous), channels_last tiles are wide in C (16-byte channel vectors). Both read through
strides, no layout copies. Large kernels in bf16 or TF32 also race a banded tensor-core
kernel (`_dw_fwd_toeplitz_kernel`).

Backward: grad_input of a stride-1 conv is the forward rows kernel run on dy with the
kernel flipped (negative strides, no copy); otherwise the tap loop with the index map
inverted (oh = (h + pt - r*dh) / sh when exact). grad_weight is a reduction over N*Ho*Wo per
(channel, tap): the rows kernel (one kernel column per program, dy rows kept in registers)
or a tap-block kernel, each writing fp32 partial sums per program that one more kernel adds
in a fixed order -- deterministic always, no atomics.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from ._common import (INT32_LIMIT, Launch, activation_code, apply_activation, dot_args,
                      dot_precision, is_channels_last, jit_launch, mma, new_output, num_sms,
                      pixel_coords, split_sum_args, split_sum_kernel)
from ._plan import (CONTIGUOUS, Family, Plan, Policy, Prefer, Steps, Tiles, check_grad_output,
                    check_operands, check_output, empty_plan, features, grad_weight_plan,
                    launch_meta, out_hw, output_steps, split_reduction, tune, tune_key)


def reference_conv2d(x, w, bias, stride, padding, dilation):
    """The plain loop nest the kernel implements: one shifted multiply-add per tap."""
    n, c, h, wd = x.shape
    k, _, r_, s_ = w.shape
    mult = k // c
    xp = torch.nn.functional.pad(x, (padding[2], padding[3], padding[0], padding[1]))
    xp = xp.repeat_interleave(mult, dim=1)
    ho = (h + padding[0] + padding[1] - dilation[0] * (r_ - 1) - 1) // stride[0] + 1
    wo = (wd + padding[2] + padding[3] - dilation[1] * (s_ - 1) - 1) // stride[1] + 1
    y = x.new_zeros(n, k, ho, wo)
    for r in range(r_):
        for s in range(s_):
            h0, w0 = r * dilation[0], s * dilation[1]
            y += xp[:, :, h0:h0 + stride[0] * (ho - 1) + 1:stride[0],
                    w0:w0 + stride[1] * (wo - 1) + 1:stride[1]] * w[:, 0, r, s].view(1, -1, 1, 1)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------
# NCHW: one channel, a wide row tile (coalesced along W). channels_last: a channel vector.
# BLOCK_C > 1 in NCHW shares each pixel's index and border-mask arithmetic between channels.
NCHW_CONFIGS = [
    dict(BLOCK_H=8, BLOCK_W=64, BLOCK_C=1, num_warps=4, num_stages=1),
    dict(BLOCK_H=4, BLOCK_W=64, BLOCK_C=4, num_warps=4, num_stages=1),
    dict(BLOCK_H=2, BLOCK_W=64, BLOCK_C=8, num_warps=4, num_stages=1),
    dict(BLOCK_H=8, BLOCK_W=32, BLOCK_C=4, num_warps=4, num_stages=1),
    dict(BLOCK_H=4, BLOCK_W=32, BLOCK_C=8, num_warps=4, num_stages=1),
    dict(BLOCK_H=16, BLOCK_W=64, BLOCK_C=1, num_warps=8, num_stages=1),
    dict(BLOCK_H=16, BLOCK_W=16, BLOCK_C=4, num_warps=4, num_stages=1),
    dict(BLOCK_H=8, BLOCK_W=8, BLOCK_C=8, num_warps=2, num_stages=1),
]
NHWC_CONFIGS = [
    dict(BLOCK_H=4, BLOCK_W=8, BLOCK_C=64, num_warps=4, num_stages=1),
    dict(BLOCK_H=2, BLOCK_W=8, BLOCK_C=128, num_warps=4, num_stages=1),
    dict(BLOCK_H=8, BLOCK_W=8, BLOCK_C=32, num_warps=4, num_stages=1),
    dict(BLOCK_H=4, BLOCK_W=4, BLOCK_C=128, num_warps=4, num_stages=1),
    dict(BLOCK_H=8, BLOCK_W=8, BLOCK_C=64, num_warps=8, num_stages=1),
    dict(BLOCK_H=2, BLOCK_W=4, BLOCK_C=64, num_warps=2, num_stages=1),
    dict(BLOCK_H=4, BLOCK_W=16, BLOCK_C=32, num_warps=4, num_stages=1),
    dict(BLOCK_H=1, BLOCK_W=8, BLOCK_C=128, num_warps=2, num_stages=1),
]
INTERPRET_CONFIG = dict(BLOCK_H=8, BLOCK_W=16, BLOCK_C=4)
UNROLL_TAPS = 49  # up to 7x7 the tap loops are unrolled (compile time grows with taps)


@triton.jit
def _dw_tap(acc, x_chan, w_chan, ih, iw, pix_ok, k_ok, H, W, sxh, sxw, w_off, ACC_DTYPE: tl.constexpr):
    """One tap: acc[p, c] += x[ih[p], iw[p], c] * w[c, tap] (zero outside the image)."""
    ok = pix_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    xv = tl.load(x_chan[None, :] + (ih * sxh + iw * sxw)[:, None], mask=ok[:, None] & k_ok[None, :],
                 other=0.0)
    wv = tl.load(w_chan + w_off, mask=k_ok, other=0.0)
    return acc + xv.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]


@triton.jit
def _dw_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    H, W, Ho, Wo, K, MULT, TILES_W, TILES_HW,
    sxn, sxc, sxh, sxw, swk, swr, sws, syn, syk, syh, syw,
    SH, SW, PT, PL, DH, DW,
    R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = pid // TILES_HW
    t = pid % TILES_HW
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    oh = (t // TILES_W) * BLOCK_H + p // BLOCK_W
    ow = (t % TILES_W) * BLOCK_W + p % BLOCK_W
    k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    k_ok = k < K
    ci = k // MULT
    if NEED_I64:
        n = n.to(tl.int64)
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        k = k.to(tl.int64)
        ci = ci.to(tl.int64)
    pix_ok = (oh < Ho) & (ow < Wo)
    x_chan = x_ptr + n * sxn + ci * sxc     # [BLOCK_C]
    w_chan = w_ptr + k * swk                # [BLOCK_C]
    ih0 = oh * SH - PT
    iw0 = ow * SW - PL
    acc = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    if UNROLL:  # small kernels: unrolled, so row/column masks are shared between taps
        for r in tl.static_range(R):
            for s in tl.static_range(S):
                acc = _dw_tap(acc, x_chan, w_chan, ih0 + r * DH, iw0 + s * DW, pix_ok, k_ok,
                              H, W, sxh, sxw, r * swr + s * sws, ACC_DTYPE)
    else:
        for r in range(R):
            for s in range(S):
                acc = _dw_tap(acc, x_chan, w_chan, ih0 + r * DH, iw0 + s * DW, pix_ok, k_ok,
                              H, W, sxh, sxw, r * swr + s * sws, ACC_DTYPE)
    if HAS_BIAS:
        acc += tl.load(b_ptr + k, mask=k_ok, other=0.0).to(ACC_DTYPE)[None, :]
    acc = apply_activation(acc, ACT)
    y_off = (n * syn + oh * syh + ow * syw)[:, None] + (k * syk)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=pix_ok[:, None] & k_ok[None, :])


# --------------------------------------------------------------------------------------
# Forward, row-reuse ("rows") kernel. The tap loop above loads R*S shifted tiles per output
# row, and every load is an L1 transaction: for 7x7 that is 49 loads per output, which
# bounds it by L1 bandwidth, not by DRAM or FMAs. Here a program owns ROWS output rows
# (x BLOCK_W pixels x BLOCK_C channels) in ROWS register accumulators; each input row,
# shifted by s, is loaded once and multiplied into every output row that reads it (up to
# R of them). Loads per output drop from R*S to S*((ROWS-1)*SH + (R-1)*DH + 1)/ROWS
# (7x7, ROWS=8: 49 -> 12.25; 3x3: 9 -> 3.75). Loop order s, input row i, output row j; i
# and j are unrolled, so the (i, j) -> tap map is resolved at compile time and no FMA is
# wasted. Measured on the H200: dev/triton/results/depthwise_rows/.
# --------------------------------------------------------------------------------------
ROWS_MAX = 8  # accumulators a0..a7 below: the largest ROWS a config may ask for


@triton.jit
def _acc_row(a0, a1, a2, a3, a4, a5, a6, a7, J: tl.constexpr, v):
    """a_J += v, for a compile-time J (Triton has no lists of tensors)."""
    if J == 0:
        a0 += v
    elif J == 1:
        a1 += v
    elif J == 2:
        a2 += v
    elif J == 3:
        a3 += v
    elif J == 4:
        a4 += v
    elif J == 5:
        a5 += v
    elif J == 6:
        a6 += v
    else:
        a7 += v
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _pick_row(g0, g1, g2, g3, g4, g5, g6, g7, J: tl.constexpr):
    """g_J, for a compile-time J."""
    if J == 0:
        g = g0
    elif J == 1:
        g = g1
    elif J == 2:
        g = g2
    elif J == 3:
        g = g3
    elif J == 4:
        g = g4
    elif J == 5:
        g = g5
    elif J == 6:
        g = g6
    else:
        g = g7
    return g


@triton.jit
def _store_row(acc, y_row, oh, Ho, b_ptr, k, yk_off, y_cols, col_ok, k_ok,
               HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC_DTYPE: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + k, mask=k_ok, other=0.0).to(ACC_DTYPE)[None, :]
    acc = apply_activation(acc, ACT)
    tl.store(y_row + y_cols[:, None] + yk_off[None, :], acc.to(y_row.dtype.element_ty),
             mask=tl.where(oh < Ho, col_ok[:, None] & k_ok[None, :], False))


@triton.jit
def _dw_fwd_rows_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    H, W, Ho, Wo, K, MULT, TILES_W, TILES_HW,
    sxn, sxc, sxh, sxw, swk, swr, sws, syn, syk, syh, syw,
    SW, PT, PL, DW,
    SH: tl.constexpr, DH: tl.constexpr,
    R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, FLIP: tl.constexpr = False,
):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = pid // TILES_HW
    t = pid % TILES_HW
    oh0 = (t // TILES_W) * ROWS
    ow = (t % TILES_W) * BLOCK_W + tl.arange(0, BLOCK_W)
    k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    k_ok = k < K
    ci = k // MULT
    if NEED_I64:
        n = n.to(tl.int64)
        oh0 = oh0.to(tl.int64)
        ow = ow.to(tl.int64)
        k = k.to(tl.int64)
        ci = ci.to(tl.int64)
    ih0 = oh0 * SH - PT
    x_chan = x_ptr + n * sxn + ci * sxc + ih0 * sxh   # [BLOCK_C], at input row ih0
    w_chan = w_ptr + k * swk
    if FLIP:  # the kernel rotated by 180 degrees: from the last tap, negative strides
        w_chan = w_chan - (R - 1) * swr - (S - 1) * sws
    a0 = tl.zeros((BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    a1 = tl.zeros((BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    a2 = tl.zeros((BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    a3 = tl.zeros((BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    a4 = tl.zeros((BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    a5 = tl.zeros((BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    a6 = tl.zeros((BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    a7 = tl.zeros((BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    # A loop, not unrolled, over s: the R weights of one kernel column stay in registers
    # (all R*S would spill), and ptxas cannot hoist the next column's loads above this one.
    # The weights are [C] vectors that Triton re-lays out through shared memory for the
    # [W, C] product; loading them as [W, C] tiles in xv's layout instead avoided that but
    # cost a scalar load per channel and thread, and measured slower on the H200
    # (channels_last bf16 3x3 C=144 56^2: 51.8 vs 43.5 us).
    for s in range(S):
        iw = ow * SW - PL + s * DW
        m_cols = ((iw >= 0) & (iw < W))[:, None] & k_ok[None, :]
        x_cols = x_chan[None, :] + (iw * sxw)[:, None]
        for i in tl.static_range((ROWS - 1) * SH + (R - 1) * DH + 1):
            ih = ih0 + i
            # (where, not &: the interpreter turns scalar & tensor masks into integers)
            xv = tl.load(x_cols + i * sxh, mask=tl.where((ih >= 0) & (ih < H), m_cols, False),
                         other=0.0)
            xv = xv.to(ACC_DTYPE)
            for j in tl.static_range(ROWS):
                # input row i feeds output row j through kernel row (i - j*SH) / DH
                if i >= j * SH and (i - j * SH) % DH == 0 and (i - j * SH) // DH < R:
                    wv = tl.load(w_chan + ((i - j * SH) // DH) * swr + s * sws, mask=k_ok,
                                 other=0.0).to(ACC_DTYPE)
                    a0, a1, a2, a3, a4, a5, a6, a7 = _acc_row(a0, a1, a2, a3, a4, a5, a6, a7,
                                                              j, xv * wv[None, :])
    col_ok = ow < Wo
    y_row = y_ptr + n * syn + oh0 * syh
    y_cols = ow * syw
    yk_off = k * syk
    _store_row(a0, y_row, oh0, Ho, b_ptr, k, yk_off, y_cols, col_ok, k_ok, HAS_BIAS, ACT, ACC_DTYPE)
    if ROWS > 1:
        _store_row(a1, y_row + syh, oh0 + 1, Ho, b_ptr, k, yk_off, y_cols, col_ok, k_ok,
                   HAS_BIAS, ACT, ACC_DTYPE)
    if ROWS > 2:
        _store_row(a2, y_row + 2 * syh, oh0 + 2, Ho, b_ptr, k, yk_off, y_cols, col_ok, k_ok,
                   HAS_BIAS, ACT, ACC_DTYPE)
        _store_row(a3, y_row + 3 * syh, oh0 + 3, Ho, b_ptr, k, yk_off, y_cols, col_ok, k_ok,
                   HAS_BIAS, ACT, ACC_DTYPE)
    if ROWS > 4:
        _store_row(a4, y_row + 4 * syh, oh0 + 4, Ho, b_ptr, k, yk_off, y_cols, col_ok, k_ok,
                   HAS_BIAS, ACT, ACC_DTYPE)
        _store_row(a5, y_row + 5 * syh, oh0 + 5, Ho, b_ptr, k, yk_off, y_cols, col_ok, k_ok,
                   HAS_BIAS, ACT, ACC_DTYPE)
        _store_row(a6, y_row + 6 * syh, oh0 + 6, Ho, b_ptr, k, yk_off, y_cols, col_ok, k_ok,
                   HAS_BIAS, ACT, ACC_DTYPE)
        _store_row(a7, y_row + 7 * syh, oh0 + 7, Ho, b_ptr, k, yk_off, y_cols, col_ok, k_ok,
                   HAS_BIAS, ACT, ACC_DTYPE)


# --------------------------------------------------------------------------------------
# Forward, large kernels on the tensor cores ("Toeplitz"): for one channel and output tile
# [BLOCK_H, BLOCK_W], each kernel row r is one small GEMM
#     acc[i, wo] += sum_j A_r[i, j] * T_r[j, wo]
#     A_r[i, j]  = x[oh_i*sh - pt + r*dh, ow0*sw - pl + j]        (KW input columns)
#     T_r[j, wo] = w[r, s]  where j = wo*sw + s*dw, else 0        (banded weight row)
# The band wastes KW/S of the MACs (about 2x for 31x31 with BLOCK_W=32) but runs on the
# tensor cores, and each loaded input feeds BLOCK_W outputs instead of one: a direct
# 31x31 loop is bound by one L1 load per FMA. Used for bf16/fp16, and fp32 under TF32.
# --------------------------------------------------------------------------------------
TOEPLITZ_CONFIGS = [
    dict(KIND="toeplitz", BLOCK_H=32, BLOCK_W=32, num_warps=4, num_stages=2),
    dict(KIND="toeplitz", BLOCK_H=16, BLOCK_W=32, num_warps=4, num_stages=2),
    dict(KIND="toeplitz", BLOCK_H=64, BLOCK_W=32, num_warps=4, num_stages=2),
    dict(KIND="toeplitz", BLOCK_H=16, BLOCK_W=16, num_warps=4, num_stages=2),
    dict(KIND="toeplitz", BLOCK_H=64, BLOCK_W=16, num_warps=4, num_stages=2),
]
TOEPLITZ_INTERPRET_CONFIG = dict(KIND="toeplitz", BLOCK_H=16, BLOCK_W=16)


@triton.jit
def _dw_fwd_toeplitz_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    H, W, Ho, Wo, K, MULT, TILES_W,
    sxn, sxc, sxh, sxw, swk, swr, sws, syn, syk, syh, syw,
    SH, SW, PT, PL, DH, DW,
    R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    NEED_I64: tl.constexpr, IS_FP32: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, KW: tl.constexpr,
):
    nk = tl.program_id(0)
    t = tl.program_id(1)
    n = nk // K
    k = nk % K
    ci = k // MULT
    oh = (t // TILES_W) * BLOCK_H + tl.arange(0, BLOCK_H)
    ow0 = (t % TILES_W) * BLOCK_W
    ow = ow0 + tl.arange(0, BLOCK_W)
    j = tl.arange(0, KW)
    iw = ow0 * SW - PL + j
    col_ok = (iw >= 0) & (iw < W)
    d = j[:, None] - (tl.arange(0, BLOCK_W) * SW)[None, :]   # window offset of tap s: s*dw
    s_idx = d // DW
    t_ok = (d >= 0) & (d % DW == 0) & (s_idx < S)
    if NEED_I64:
        n = n.to(tl.int64)
        k = k.to(tl.int64)
        ci = ci.to(tl.int64)
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        iw = iw.to(tl.int64)
    x_chan = x_ptr + n * sxn + ci * sxc
    w_chan = w_ptr + k * swk
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for r in range(R):
        ih = oh * SH - PT + r * DH
        row_ok = (ih >= 0) & (ih < H)
        a = tl.load(x_chan + (ih * sxh)[:, None] + (iw * sxw)[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        band = tl.load(w_chan + r * swr + s_idx * sws, mask=t_ok, other=0.0)
        acc = mma(a, band, acc, True, IS_FP32, PREC, UPCAST, tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + k).to(tl.float32)
    acc = apply_activation(acc, ACT)
    y_off = n * syn + k * syk + (oh * syh)[:, None] + (ow * syw)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty),
             mask=(oh < Ho)[:, None] & (ow < Wo)[None, :])


# Row-reuse tiles (KIND="rows"): NCHW wide in W with few channels, channels_last a channel
# vector (16-byte loads) over a few pixels. They race the tap-loop tiles that won on the
# H200 (before and after the rows kernel: stride-2 and some channels_last layers).
# Every tile below won at least one layer of the H200 runs (MobileNetV2 3x3, ConvNeXt 7x7,
# RepLKNet 13x13 / 27x27 at batch 32; dev/triton/results/depthwise_rows/round*.log).
ROWS_NCHW_CONFIGS = [
    dict(KIND="rows", ROWS=8, BLOCK_W=64, BLOCK_C=1, num_warps=2, num_stages=1),
    dict(KIND="rows", ROWS=4, BLOCK_W=64, BLOCK_C=2, num_warps=4, num_stages=1),
    dict(KIND="rows", ROWS=8, BLOCK_W=16, BLOCK_C=4, num_warps=2, num_stages=1),
    dict(KIND="rows", ROWS=4, BLOCK_W=16, BLOCK_C=8, num_warps=4, num_stages=1),
    dict(KIND="rows", ROWS=8, BLOCK_W=8, BLOCK_C=8, num_warps=2, num_stages=1),
]
ROWS_NHWC_CONFIGS = [
    dict(KIND="rows", ROWS=8, BLOCK_W=8, BLOCK_C=64, num_warps=4, num_stages=1),
    dict(KIND="rows", ROWS=4, BLOCK_W=16, BLOCK_C=32, num_warps=4, num_stages=1),
    dict(KIND="rows", ROWS=8, BLOCK_W=8, BLOCK_C=128, num_warps=4, num_stages=1),
    dict(KIND="rows", ROWS=8, BLOCK_W=8, BLOCK_C=32, num_warps=2, num_stages=1),
]
# Large kernels (more than UNROLL_TAPS taps): narrow tiles keep the rows kernel's registers
# in bounds (ptxas for sm_90: a 16-byte channel vector per thread spills from R = 27 on).
ROWS_LARGE_CONFIGS = [
    dict(KIND="rows", ROWS=8, BLOCK_W=16, BLOCK_C=4, num_warps=2, num_stages=1),
    dict(KIND="rows", ROWS=8, BLOCK_W=8, BLOCK_C=8, num_warps=2, num_stages=1),
]
ROWS_LARGE_CL_CONFIGS = ROWS_LARGE_CONFIGS + [
    dict(KIND="rows", ROWS=8, BLOCK_W=8, BLOCK_C=32, num_warps=2, num_stages=1),
]
ROWS_INTERPRET_CONFIG = dict(KIND="rows", ROWS=4, BLOCK_W=16, BLOCK_C=8)


# --------------------------------------------------------------------------------------
# grad_input: dx[n, c, h, w] = sum_{m < MULT} sum_{r,s} dy[n, c*MULT + m, oh, ow] * w[c*MULT + m, 0, r, s]
#   where oh*sh = h + pt - r*dh and ow*sw = w + pl - s*dw exactly.
# --------------------------------------------------------------------------------------
@triton.jit
def _dw_tap_transposed(acc, dy_chan, w_chan, th, tw, pix_ok, c_ok, Ho, Wo, SH, SW, syh, syw, w_off,
                       ACC_DTYPE: tl.constexpr):
    """One tap of grad_input: the output pixel (th/sh, tw/sw) this input pixel fed, if any."""
    oh = th // SH
    ow = tw // SW
    ok = (pix_ok & (th >= 0) & (tw >= 0) & (th % SH == 0) & (tw % SW == 0) & (oh < Ho)
          & (ow < Wo))
    g = tl.load(dy_chan[None, :] + (oh * syh + ow * syw)[:, None], mask=ok[:, None] & c_ok[None, :],
                other=0.0)
    wv = tl.load(w_chan + w_off, mask=c_ok, other=0.0)
    return acc + g.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]


@triton.jit
def _dw_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    H, W, Ho, Wo, C, MULT, TILES_W, TILES_HW,
    syn, syk, syh, syw, swk, swr, sws, sxn, sxc, sxh, sxw,
    SH, SW, PT, PL, DH, DW,
    R: tl.constexpr, S: tl.constexpr, NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr,
    UNROLL: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = pid // TILES_HW
    t = pid % TILES_HW
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    ih = (t // TILES_W) * BLOCK_H + p // BLOCK_W
    iw = (t % TILES_W) * BLOCK_W + p % BLOCK_W
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    if NEED_I64:
        n = n.to(tl.int64)
        ih = ih.to(tl.int64)
        iw = iw.to(tl.int64)
        c = c.to(tl.int64)
    pix_ok = (ih < H) & (iw < W)
    acc = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    for m in range(MULT):
        k = c * MULT + m
        dy_chan = dy_ptr + n * syn + k * syk
        w_chan = w_ptr + k * swk
        if UNROLL:
            for r in tl.static_range(R):
                for s in tl.static_range(S):
                    acc = _dw_tap_transposed(acc, dy_chan, w_chan, ih + PT - r * DH,
                                             iw + PL - s * DW, pix_ok, c_ok, Ho, Wo, SH, SW,
                                             syh, syw, r * swr + s * sws, ACC_DTYPE)
        else:
            for r in range(R):
                for s in range(S):
                    acc = _dw_tap_transposed(acc, dy_chan, w_chan, ih + PT - r * DH,
                                             iw + PL - s * DW, pix_ok, c_ok, Ho, Wo, SH, SW,
                                             syh, syw, r * swr + s * sws, ACC_DTYPE)
    x_off = (n * sxn + ih * sxh + iw * sxw)[:, None] + (c * sxc)[None, :]
    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=pix_ok[:, None] & c_ok[None, :])


# --------------------------------------------------------------------------------------
# grad_weight: dw[k, 0, r, s] = sum_{n, oh, ow} dy[n, k, oh, ow] * x[n, k // MULT, ih, iw]
# Each program owns TAP_BLOCK taps x BLOCK_C channels and one chunk of the N*Ho*Wo
# reduction. Per step it loads a [BLOCK_P, BLOCK_C] tile of dy once and the matching input
# pixels at every tap of its block, as one [TAP_BLOCK, BLOCK_P, BLOCK_C] tile (overlapping
# shifts: L1 hits), and accumulates the products; the sum over pixels happens once at the
# end. So dy is read once per tap block (once in all for kernels up to 4x4 / 8x8 blocks),
# not once per tap. Grid (tap block, channel block, split).
# --------------------------------------------------------------------------------------
WGRAD_NCHW_CONFIGS = [
    dict(TAP_BLOCK=16, BLOCK_P=128, BLOCK_C=1, num_warps=4, num_stages=1),
    dict(TAP_BLOCK=16, BLOCK_P=64, BLOCK_C=2, num_warps=4, num_stages=1),
    dict(TAP_BLOCK=16, BLOCK_P=256, BLOCK_C=1, num_warps=8, num_stages=1),
    dict(TAP_BLOCK=64, BLOCK_P=32, BLOCK_C=1, num_warps=4, num_stages=1),
    dict(TAP_BLOCK=8, BLOCK_P=256, BLOCK_C=1, num_warps=4, num_stages=1),
    dict(TAP_BLOCK=1, BLOCK_P=1024, BLOCK_C=1, num_warps=4, num_stages=1),
]
# Measured on an H200 (the tuner log of the run at commit 284a0a4): TAP_BLOCK=1 wins most
# channels_last shapes (its [P, C] tile loads 16-byte channel vectors; the 3-D tap tile does not).
WGRAD_NHWC_CONFIGS = [
    dict(TAP_BLOCK=1, BLOCK_P=32, BLOCK_C=64, num_warps=4, num_stages=1),
    dict(TAP_BLOCK=1, BLOCK_P=64, BLOCK_C=64, num_warps=8, num_stages=1),
    dict(TAP_BLOCK=1, BLOCK_P=16, BLOCK_C=128, num_warps=4, num_stages=1),
    dict(TAP_BLOCK=16, BLOCK_P=1, BLOCK_C=128, num_warps=4, num_stages=1),
    dict(TAP_BLOCK=16, BLOCK_P=4, BLOCK_C=64, num_warps=8, num_stages=1),
    dict(TAP_BLOCK=64, BLOCK_P=1, BLOCK_C=32, num_warps=4, num_stages=1),
]
WGRAD_INTERPRET_CONFIG = dict(TAP_BLOCK=16, BLOCK_P=16, BLOCK_C=4)


@triton.jit
def _dw_bwd_weight_kernel(
    dy_ptr, x_ptr, part_ptr,
    H, W, Ho, Wo, K, MULT, Q, CHUNK,
    syn, syk, syh, syw, sxn, sxc, sxh, sxw,
    SH, SW, PT, PL, DH, DW,
    R: tl.constexpr, S: tl.constexpr, NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr,
    TAP_BLOCK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    tb = tl.program_id(0)
    pid_c = tl.program_id(1)
    split = tl.program_id(2)
    tap = tb * TAP_BLOCK + tl.arange(0, TAP_BLOCK)
    tap_ok = tap < R * S
    r = tap // S
    s = tap % S
    k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    k_ok = k < K
    ci = k // MULT
    if NEED_I64:
        k = k.to(tl.int64)
        ci = ci.to(tl.int64)
    tap_off = (r * DH) * sxh + (s * DW) * sxw            # [T] offset of each tap
    q_lo = split * CHUNK
    q_hi = tl.minimum(q_lo + CHUNK, Q)
    acc = tl.zeros((TAP_BLOCK, BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    for q0 in range(q_lo, q_hi, BLOCK_P):
        q = q0 + tl.arange(0, BLOCK_P)
        q_ok = q < q_hi
        n, oh, ow = pixel_coords(q, Ho, Wo, NEED_I64)
        g = tl.load(dy_ptr + (n * syn + oh * syh + ow * syw)[:, None] + (k * syk)[None, :],
                    mask=q_ok[:, None] & k_ok[None, :], other=0.0)       # [P, C]
        ih = (oh * SH - PT)[None, :] + (r * DH)[:, None]                   # [T, P]
        iw = (ow * SW - PL)[None, :] + (s * DW)[:, None]
        x_ok = (tap_ok[:, None] & q_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
        x_pix = (n * sxn + (oh * SH - PT) * sxh + (ow * SW - PL) * sxw)[None, :] + tap_off[:, None]
        xv = tl.load(x_ptr + x_pix[:, :, None] + (ci * sxc)[None, None, :],
                     mask=x_ok[:, :, None] & k_ok[None, None, :], other=0.0)  # [T, P, C]
        acc += xv.to(ACC_DTYPE) * g.to(ACC_DTYPE)[None, :, :]
    part = tl.sum(acc, axis=1)                                              # [T, C]
    base = split.to(tl.int64) * (R * S) * K
    tl.store(part_ptr + base + (tap * K)[:, None] + k[None, :], part,
             mask=tap_ok[:, None] & k_ok[None, :])


# grad_weight with row reuse ("rows"), kernels up to 8 rows (R <= ROWS_MAX): a program owns
# one kernel column s and walks a chunk of [ROWS x BLOCK_W x BLOCK_C] output tiles. Per tile
# it keeps the ROWS rows of dy in registers (g0..g7) and loads each input row once, shifted
# by s, multiplying it into the R accumulators acc_r (one per kernel row) of every (r, j)
# pair that reads it. Per tile and column: ROWS + (ROWS-1)*SH + (R-1)*DH + 1 row loads for
# ROWS*R products, against 2 loads per product in the tap-block kernel above. The S
# programs of a chunk are neighbours in the grid, so DRAM sees dy and x about once.
# All tiles are 2-D [BLOCK_W, BLOCK_C] with one layout (a 3-D [S, W, C] variant spent its
# time converting dy between layouts through shared memory). Partial sums per program,
# reduced in a fixed order afterwards (deterministic).
@triton.jit
def _load_row(ptr, J: tl.constexpr, ROWS: tl.constexpr, oh0, Ho, syh, mask, like):
    if J < ROWS:
        v = tl.load(ptr + J * syh, mask=tl.where(oh0 + J < Ho, mask, False), other=0.0)
        v = v.to(like.dtype)
    else:
        v = like
    return v


@triton.jit
def _dw_bwd_weight_rows_kernel(
    dy_ptr, x_ptr, part_ptr,
    H, W, Ho, Wo, K, MULT, TILES_W, TILES_HW, TILES, CHUNK,
    syn, syk, syh, syw, sxn, sxc, sxh, sxw,
    SW, PT, PL, DW,
    SH: tl.constexpr, DH: tl.constexpr,
    R: tl.constexpr, S: tl.constexpr, NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    s = tl.program_id(0)
    split = tl.program_id(1)
    pid_c = tl.program_id(2)
    k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    k_ok = k < K
    ci = k // MULT
    if NEED_I64:
        k = k.to(tl.int64)
        ci = ci.to(tl.int64)
    zero = tl.zeros((BLOCK_W, BLOCK_C), dtype=ACC_DTYPE)
    a0 = zero
    a1 = zero
    a2 = zero
    a3 = zero
    a4 = zero
    a5 = zero
    a6 = zero
    a7 = zero
    q_hi = tl.minimum(split * CHUNK + CHUNK, TILES)
    for q in range(split * CHUNK, q_hi):
        n = q // TILES_HW
        t = q % TILES_HW
        oh0 = (t // TILES_W) * ROWS
        ow = (t % TILES_W) * BLOCK_W + tl.arange(0, BLOCK_W)
        if NEED_I64:
            n = n.to(tl.int64)
            oh0 = oh0.to(tl.int64)
            ow = ow.to(tl.int64)
        # dy is zero outside the output, so x needs no output-column mask of its own
        g_ptr = dy_ptr + n * syn + oh0 * syh + (ow * syw)[:, None] + (k * syk)[None, :]
        m_g = (ow < Wo)[:, None] & k_ok[None, :]
        g0 = _load_row(g_ptr, 0, ROWS, oh0, Ho, syh, m_g, zero)
        g1 = _load_row(g_ptr, 1, ROWS, oh0, Ho, syh, m_g, zero)
        g2 = _load_row(g_ptr, 2, ROWS, oh0, Ho, syh, m_g, zero)
        g3 = _load_row(g_ptr, 3, ROWS, oh0, Ho, syh, m_g, zero)
        g4 = _load_row(g_ptr, 4, ROWS, oh0, Ho, syh, m_g, zero)
        g5 = _load_row(g_ptr, 5, ROWS, oh0, Ho, syh, m_g, zero)
        g6 = _load_row(g_ptr, 6, ROWS, oh0, Ho, syh, m_g, zero)
        g7 = _load_row(g_ptr, 7, ROWS, oh0, Ho, syh, m_g, zero)
        ih0 = oh0 * SH - PT
        iw = ow * SW - PL + s * DW
        m_x = ((iw >= 0) & (iw < W))[:, None] & k_ok[None, :]
        x_ptrs = x_ptr + n * sxn + ih0 * sxh + (iw * sxw)[:, None] + (ci * sxc)[None, :]
        for i in tl.static_range((ROWS - 1) * SH + (R - 1) * DH + 1):
            ih = ih0 + i
            xv = tl.load(x_ptrs + i * sxh, mask=tl.where((ih >= 0) & (ih < H), m_x, False),
                         other=0.0).to(ACC_DTYPE)
            for j in tl.static_range(ROWS):
                if i >= j * SH and (i - j * SH) % DH == 0 and (i - j * SH) // DH < R:
                    g = _pick_row(g0, g1, g2, g3, g4, g5, g6, g7, j)
                    a0, a1, a2, a3, a4, a5, a6, a7 = _acc_row(a0, a1, a2, a3, a4, a5, a6, a7,
                                                              (i - j * SH) // DH, xv * g)
    # part[split, r*S + s, k] = sum over the tile's pixels of acc_r[:, k]
    base = part_ptr + split.to(tl.int64) * (R * S) * K + s * K + k
    tl.store(base, tl.sum(a0, axis=0), mask=k_ok)
    if R > 1:
        tl.store(base + S * K, tl.sum(a1, axis=0), mask=k_ok)
    if R > 2:
        tl.store(base + 2 * S * K, tl.sum(a2, axis=0), mask=k_ok)
    if R > 3:
        tl.store(base + 3 * S * K, tl.sum(a3, axis=0), mask=k_ok)
    if R > 4:
        tl.store(base + 4 * S * K, tl.sum(a4, axis=0), mask=k_ok)
    if R > 5:
        tl.store(base + 5 * S * K, tl.sum(a5, axis=0), mask=k_ok)
    if R > 6:
        tl.store(base + 6 * S * K, tl.sum(a6, axis=0), mask=k_ok)
    if R > 7:
        tl.store(base + 7 * S * K, tl.sum(a7, axis=0), mask=k_ok)


# Rows tiles for grad_weight. P: programs per SM (the split of the pixel tiles); each
# program writes one [R*S, BLOCK_C] partial, so more programs cost reduction traffic.
WGRAD_ROWS_NCHW_CONFIGS = [
    dict(KIND="rows", ROWS=8, BLOCK_W=64, BLOCK_C=1, P=4, num_warps=2, num_stages=1),
    dict(KIND="rows", ROWS=4, BLOCK_W=32, BLOCK_C=1, P=8, num_warps=1, num_stages=1),
    dict(KIND="rows", ROWS=8, BLOCK_W=16, BLOCK_C=4, P=4, num_warps=2, num_stages=1),
    dict(KIND="rows", ROWS=8, BLOCK_W=8, BLOCK_C=8, P=4, num_warps=2, num_stages=1),
]
WGRAD_ROWS_NHWC_CONFIGS = [
    dict(KIND="rows", ROWS=8, BLOCK_W=16, BLOCK_C=32, P=4, num_warps=4, num_stages=1),
    dict(KIND="rows", ROWS=8, BLOCK_W=8, BLOCK_C=64, P=4, num_warps=4, num_stages=1),
    dict(KIND="rows", ROWS=8, BLOCK_W=8, BLOCK_C=64, P=8, num_warps=4, num_stages=1),
    dict(KIND="rows", ROWS=4, BLOCK_W=8, BLOCK_C=64, P=8, num_warps=2, num_stages=1),
]
WGRAD_ROWS_INTERPRET_CONFIG = dict(KIND="rows", ROWS=4, BLOCK_W=8, BLOCK_C=4, P=1)


# --------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DepthwisePolicy(Policy):
    """The depthwise family's tile lists and choices (defaults: as measured on an H200).
    One Tiles per (kernel set, layout); the plans choose among them by filter size,
    stride and dtype."""
    # Kernels up to unroll_taps taps: rows tiles and the best tap-loop tiles race. First
    # sight (no tuned or shipped tile): the tap-loop tiles for strided convs (they won the
    # stride-2 layers on the H200), else the first rows tile the image keeps (`_fits`
    # drops tiles wider than the image or the channels). "pixels" is one output plane.
    fwd_rows_nchw: Tiles = Tiles("dw_fwd_rows_nchw", tuple(ROWS_NCHW_CONFIGS + NCHW_CONFIGS[6:7]),
                                 ROWS_INTERPRET_CONFIG, (Prefer((5,), {"stride": (2, None)}),))
    fwd_rows_nhwc: Tiles = Tiles("dw_fwd_rows_nhwc", tuple(ROWS_NHWC_CONFIGS + NHWC_CONFIGS[2:3]
                                                           + NHWC_CONFIGS[6:7]),
                                 ROWS_INTERPRET_CONFIG, (Prefer((4, 5), {"stride": (2, None)}),))
    # Larger kernels without the tensor-core band (fp32 IEEE, fp64): the tap loop, not
    # unrolled, against the rows kernel.
    fwd_nchw: Tiles = Tiles("dw_fwd_nchw_v2", tuple(ROWS_LARGE_CONFIGS + NCHW_CONFIGS),
                            INTERPRET_CONFIG)
    fwd_nhwc: Tiles = Tiles("dw_fwd_nhwc_v2", tuple(ROWS_LARGE_CL_CONFIGS + NHWC_CONFIGS),
                            INTERPRET_CONFIG)
    # Large kernels: the tensor-core band races the direct loop. All direct tiles take
    # part: on an earlier H200 run (only the first two, both pruned for images under 64
    # pixels wide) small images were left with the band alone, whose 16x16 tiles waste most
    # of a 7x7 or 14x14 plane (RepLKNet 13x13 @ 7x7: 375 us NCHW vs 89 us for the direct
    # channels_last tile).
    fwd_large: Tiles = Tiles("dw_fwd_large_v2", tuple(TOEPLITZ_CONFIGS + ROWS_LARGE_CONFIGS
                                                      + NCHW_CONFIGS), TOEPLITZ_INTERPRET_CONFIG)
    fwd_large_cl: Tiles = Tiles("dw_fwd_large_cl_v2", tuple(TOEPLITZ_CONFIGS
                                                            + ROWS_LARGE_CL_CONFIGS
                                                            + NHWC_CONFIGS),
                                TOEPLITZ_INTERPRET_CONFIG)
    grad_input_nchw: Tiles = Tiles("dw_bwd_input_nchw", tuple(NCHW_CONFIGS), INTERPRET_CONFIG)
    grad_input_nhwc: Tiles = Tiles("dw_bwd_input_nhwc", tuple(NHWC_CONFIGS), INTERPRET_CONFIG)
    # Stride 1, one output channel per input channel, up to unroll_taps taps: grad_input is
    # the forward correlation of dy with the flipped kernel, so the forward rows tiles run it.
    grad_input_rows_nchw: Tiles = Tiles("dw_bwd_input_rows_nchw",
                                        tuple(ROWS_NCHW_CONFIGS + NCHW_CONFIGS[6:7]),
                                        ROWS_INTERPRET_CONFIG)
    grad_input_rows_nhwc: Tiles = Tiles("dw_bwd_input_rows_nhwc",
                                        tuple(ROWS_NHWC_CONFIGS + NHWC_CONFIGS[2:3]
                                              + NHWC_CONFIGS[1:2]), ROWS_INTERPRET_CONFIG)
    # The tap-block tiles never beat the rows tiles on the H200 layers (56 cases): not raced.
    grad_weight_rows_nchw: Tiles = Tiles("dw_bwd_weight_rows_nchw",
                                         tuple(WGRAD_ROWS_NCHW_CONFIGS),
                                         WGRAD_ROWS_INTERPRET_CONFIG)
    grad_weight_rows_nhwc: Tiles = Tiles("dw_bwd_weight_rows_nhwc",
                                         tuple(WGRAD_ROWS_NHWC_CONFIGS),
                                         WGRAD_ROWS_INTERPRET_CONFIG)
    grad_weight_nchw: Tiles = Tiles("dw_bwd_weight_nchw", tuple(WGRAD_NCHW_CONFIGS),
                                    WGRAD_INTERPRET_CONFIG)
    grad_weight_nhwc: Tiles = Tiles("dw_bwd_weight_nhwc", tuple(WGRAD_NHWC_CONFIGS),
                                    WGRAD_INTERPRET_CONFIG)
    # narrower kernels waste too much of the band (and are memory-bound anyway)
    toeplitz_min_s: int = 9
    grad_weight_programs_per_sm: int = 8  # the tap-block split aims at this many per SM


POLICY = DepthwisePolicy()


def _acc_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _part_dtype(dtype):
    """torch dtype of grad_weight's partial sums (the kernels' accumulator)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(name, a, b, input_size, weight_size, groups):
    check_operands(name, a, b)
    c, k = input_size[1], weight_size[0]
    if groups != c or weight_size[1] != 1 or k % c:
        raise ValueError(f"fastconv.{name}: needs a depthwise conv (groups == in_channels, "
                         f"weight (k*in_channels, 1, R, S)); got input channels {c}, weight "
                         f"{tuple(weight_size)}, groups={groups}")


def _fits(cfg, ho, wo, k):
    """Skip tiles far larger than the image or the channel count."""
    if cfg.get("KIND") == "toeplitz":
        return (cfg["BLOCK_W"] <= max(16, triton.next_power_of_2(wo))
                and cfg["BLOCK_H"] <= max(16, triton.next_power_of_2(ho)))
    return (cfg["BLOCK_W"] <= max(4, triton.next_power_of_2(wo))
            and cfg.get("BLOCK_H", cfg.get("ROWS")) <= max(2, triton.next_power_of_2(ho))
            and cfg["BLOCK_C"] <= max(1, triton.next_power_of_2(k)))


def _rows_args(meta, opts, x, w, y, stride, padding, dilation, has_bias, act, i64, flip=False):
    """(grid, scalar args, constexprs and options) of the row-reuse kernel computing
    y = conv(x, w) (+ b, activation), any layouts. flip=True convolves with w rotated by 180
    degrees, read in place through negative strides from its last tap (grad_input of a
    stride-1 conv)."""
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    ho, wo = y.shape[2], y.shape[3]
    swk, swr, sws = w.stride(0), w.stride(2), w.stride(3)
    if flip:
        swr, sws = -swr, -sws
    rows = meta["ROWS"]
    if rows not in (1, 2, 4, 8):
        raise ValueError(f"fastconv: rows kernel needs ROWS in 1, 2, 4, {ROWS_MAX}; got {rows}")
    tiles_w = triton.cdiv(wo, meta["BLOCK_W"])
    tiles_hw = triton.cdiv(ho, rows) * tiles_w
    grid = (n * tiles_hw, triton.cdiv(k, meta["BLOCK_C"]))
    scalars = (h, wd, ho, wo, k, k // c, tiles_w, tiles_hw, *x.stride(), swk, swr, sws,
               *y.stride(), stride[1], padding[0], padding[2], dilation[1])
    return grid, scalars, dict(SH=stride[0], DH=dilation[0], R=r, S=s, HAS_BIAS=has_bias,
                               ACT=act, NEED_I64=i64, ACC_DTYPE=_acc_dtype(x.dtype), FLIP=flip,
                               **meta, **opts)


# --------------------------------------------------------------------------------------
# Forward plan
# --------------------------------------------------------------------------------------
def _plan_conv2d(x, w, bias, stride, padding, dilation, groups, activation, policy):
    name = "triton_depthwise_conv2d"
    _check(name, x, w, x.shape, w.shape, groups)
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    ho, wo = out_hw(h, wd, r, s, stride, padding, dilation)
    check_output(name, ho, wo)
    cl = is_channels_last(x) or is_channels_last(w)
    y = new_output((n, k, ho, wo), x, cl)
    if y.numel() == 0:
        return empty_plan((n, k, ho, wo), cl)
    fwd = _Forward(x, w, y, cl, stride, padding, dilation, bias is not None, activation, policy)
    if r * s <= UNROLL_TAPS:
        tiles = policy.fwd_rows_nhwc if is_channels_last(y) else policy.fwd_rows_nchw
    else:
        tiles = policy.fwd_nhwc if is_channels_last(y) else policy.fwd_nchw
    if s >= policy.toeplitz_min_s and (x.dtype in (torch.float16, torch.bfloat16)
                                       or dot_precision(x.dtype) == "tf32"):
        tiles = policy.fwd_large_cl if is_channels_last(y) else policy.fwd_large
    b0 = w if bias is None else bias.contiguous()
    key = tune_key(x, w, n, c, h, wd, k, 1, r, s, stride, padding, dilation, groups)
    cfg = tune(policy, tiles, key, x.device, lambda cfg: fwd.launch_once(cfg, x, w, b0, y),
               lambda cfg: _fits(cfg, ho, wo, k), features(ho * wo, k, 1, x.dtype, stride))
    return fwd.build(cfg)


class _Forward:
    """The forward's three kernels for one geometry: the tap loop, the row-reuse kernel
    ("rows") and the banded tensor-core kernel ("toeplitz"), one per tile KIND."""

    def __init__(self, x, w, y, cl, stride, padding, dilation, has_bias, activation, policy):
        self.x, self.w, self.y = x, w, y  # shapes and strides only (the plan's tensors)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.size, self.cl, self.device = tuple(y.shape), cl, x.device
        self.has_bias, self.act = has_bias, activation_code(activation)
        self.i64 = policy.needs_int64(x, w, y)

    def kernel_args(self, cfg):
        """(kernel, transpose input?, grid, scalar args, constexprs and options) of cfg."""
        x, w, y, stride, dilation = self.x, self.w, self.y, self.stride, self.dilation
        n, c, h, wd = x.shape
        k, _, r, s = w.shape
        ho, wo = y.shape[2], y.shape[3]
        meta, opts = launch_meta(cfg)
        if cfg.get("KIND") == "rows":
            grid, scalars, kw = _rows_args(meta, opts, x, w, y, stride, self.padding, dilation,
                                           self.has_bias, self.act, self.i64)
            return _dw_fwd_rows_kernel, False, grid, scalars, kw
        conv = (stride[0], stride[1], self.padding[0], self.padding[2], dilation[0], dilation[1])
        wst = (w.stride(0), w.stride(2), w.stride(3))
        tiles_w = triton.cdiv(wo, meta["BLOCK_W"])
        tiles_hw = triton.cdiv(ho, meta["BLOCK_H"]) * tiles_w
        common = dict(R=r, S=s, HAS_BIAS=self.has_bias, ACT=self.act, **meta, **opts)
        if cfg.get("KIND") == "toeplitz":
            # Rows of one channel must be contiguous for the A tiles: channels_last input is
            # transposed once per call (a few us against a compute-bound conv); the output is
            # written through its strides in whatever layout it has.
            band = max(16, triton.next_power_of_2((meta["BLOCK_W"] - 1) * stride[1]
                                                  + (s - 1) * dilation[1] + 1))
            d = dot_args(x.dtype)
            xt_strides = (c * h * wd, h * wd, wd, 1)  # x.contiguous()'s
            return _dw_fwd_toeplitz_kernel, True, (n * k, tiles_hw), (
                h, wd, ho, wo, k, k // c, tiles_w, *xt_strides, *wst, *y.stride(), *conv), dict(
                NEED_I64=self.i64 or n * c * h * wd > INT32_LIMIT, IS_FP32=d["IS_FP32"],
                PREC=d["PREC"], UPCAST=d["UPCAST"], KW=band, **common)
        return _dw_fwd_kernel, False, (n * tiles_hw, triton.cdiv(k, meta["BLOCK_C"])), (
            h, wd, ho, wo, k, k // c, tiles_w, tiles_hw, *x.stride(), *wst, *y.stride(),
            *conv), dict(NEED_I64=self.i64, ACC_DTYPE=_acc_dtype(x.dtype),
                         UNROLL=r * s <= UNROLL_TAPS, **common)

    def launch_once(self, cfg, x, w, b, y):
        kernel, transpose, grid, scalars, kw = self.kernel_args(cfg)
        jit_launch(kernel, grid, x.contiguous() if transpose else x, w, b, y, *scalars, **kw)

    def build(self, cfg) -> Plan:
        kernel, transpose, grid, scalars, kw = self.kernel_args(cfg)
        fast = Launch(kernel, grid, 4, scalars, kw, self.device)
        size, cl = self.size, self.cl

        def run(x, w, bias):
            y = new_output(size, x, cl)
            fast(x.contiguous() if transpose else x, w, w if bias is None else bias.contiguous(),
                 y)
            return y
        if transpose:  # slot 3: x's NCHW copy, 4: the output
            steps = Steps(buffers=(("copy", 0, CONTIGUOUS), (tuple(size), cl, 0)),
                          launches=((fast, (3, 1, 2, 4)),), result=4)
        else:
            steps = output_steps(fast, size, cl, (0, 1, 2, 3))
        return Plan(run, fast, steps=steps)


# --------------------------------------------------------------------------------------
# grad_input plan
# --------------------------------------------------------------------------------------
def _plan_grad_input(dy, w, input_size, stride, padding, dilation, groups, policy):
    name = "triton_depthwise_conv2d_grad_input"
    _check(name, dy, w, input_size, w.shape, groups)
    n, c, h, wd = input_size
    k, _, r, s = w.shape
    check_grad_output(name, dy, input_size, w.shape, stride, padding, dilation)
    cl = is_channels_last(dy)
    dx = new_output(tuple(input_size), dy, cl)
    if dx.numel() == 0:
        return empty_plan(tuple(input_size), cl)
    gin = _GradInput(dy, w, dx, cl, stride, padding, dilation, policy)
    if tuple(stride) == (1, 1) and k == c and r * s <= UNROLL_TAPS:
        tiles = policy.grad_input_rows_nhwc if is_channels_last(dx) else policy.grad_input_rows_nchw
    else:
        tiles = policy.grad_input_nhwc if is_channels_last(dx) else policy.grad_input_nchw
    key = tune_key(dy, w, n, c, h, wd, k, 1, r, s, stride, padding, dilation, groups)
    cfg = tune(policy, tiles, key, dy.device, lambda cfg: gin.launch_once(cfg, dy, w, dx),
               lambda cfg: _fits(cfg, h, wd, c), features(h * wd, c, 1, dy.dtype, stride))
    return gin.build(cfg)


class _GradInput:
    """grad_input's kernels for one geometry: the transposed tap loop, or (stride 1) the
    forward rows kernel on the flipped filter."""

    def __init__(self, dy, w, dx, cl, stride, padding, dilation, policy):
        r, s = w.shape[2], w.shape[3]
        self.dy, self.w, self.dx = dy, w, dx  # shapes and strides only
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.size, self.cl, self.device = tuple(dx.shape), cl, dy.device
        self.i64 = policy.needs_int64(dy, w, dx)
        # the forward conv that computes dx when stride is 1: padding (R-1)*d - p, flipped
        self.flip_pad = ((r - 1) * dilation[0] - padding[0], 0,
                         (s - 1) * dilation[1] - padding[2], 0)

    def kernel_args(self, cfg):
        """(kernel, flipped weight?, grid, scalar args, constexprs and options) of cfg."""
        dy, w, dx, stride, padding, dilation = (self.dy, self.w, self.dx, self.stride,
                                                self.padding, self.dilation)
        n, c, h, wd = dx.shape
        k, _, r, s = w.shape
        meta, opts = launch_meta(cfg)
        if cfg.get("KIND") == "rows":
            grid, scalars, kw = _rows_args(meta, opts, dy, w, dx, (1, 1), self.flip_pad,
                                           dilation, False, 0, self.i64, flip=True)
            return _dw_fwd_rows_kernel, True, grid, scalars, kw
        tiles_w = triton.cdiv(wd, meta["BLOCK_W"])
        tiles_hw = triton.cdiv(h, meta["BLOCK_H"]) * tiles_w
        return _dw_bwd_input_kernel, False, (n * tiles_hw, triton.cdiv(c, meta["BLOCK_C"])), (
            h, wd, dy.shape[2], dy.shape[3], c, k // c, tiles_w, tiles_hw,
            *dy.stride(), w.stride(0), w.stride(2), w.stride(3), *dx.stride(),
            stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1]), dict(
            R=r, S=s, NEED_I64=self.i64, ACC_DTYPE=_acc_dtype(dy.dtype),
            UNROLL=r * s <= UNROLL_TAPS, **meta, **opts)

    def launch_once(self, cfg, dy, w, dx):
        kernel, flip, grid, scalars, kw = self.kernel_args(cfg)
        if flip:  # the rows kernel: dx = conv(dy, flipped w), no bias (w in its slot)
            jit_launch(kernel, grid, dy, w, w, dx, *scalars, **kw)
        else:
            jit_launch(kernel, grid, dy, w, dx, *scalars, **kw)

    def build(self, cfg) -> Plan:
        kernel, flip, grid, scalars, kw = self.kernel_args(cfg)
        fast = Launch(kernel, grid, 4 if flip else 3, scalars, kw, self.device)
        size, cl = self.size, self.cl

        def run(dy, w):
            dx = new_output(size, dy, cl)
            if flip:
                fast(dy, w, w, dx)
            else:
                fast(dy, w, dx)
            return dx
        return Plan(run, fast, steps=output_steps(fast, size, cl, (0, 1, 1, 3) if flip
                                                  else (0, 1, 3)))


def _wgrad_rows_args(meta, opts, dy, x, r, s, stride, padding, dilation, i64, programs):
    """Row-reuse grad_weight: (grid, scalar args, constexprs and options, partial-sum size
    [split, R*S, K]) for `_dw_bwd_weight_rows_kernel(dy, x, part, ...)`. The split cuts
    the output row tiles."""
    n, c, h, wd = x.shape
    k, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    rows = meta["ROWS"]
    if rows not in (1, 2, 4, 8) or r > ROWS_MAX:
        raise ValueError(f"fastconv: rows grad_weight needs ROWS in 1, 2, 4, 8 and R <= "
                         f"{ROWS_MAX}; got ROWS={rows}, R={r}")
    tiles_w = triton.cdiv(wo, meta["BLOCK_W"])
    tiles_hw = triton.cdiv(ho, rows) * tiles_w
    tiles = n * tiles_hw
    cblocks = triton.cdiv(k, meta["BLOCK_C"])
    split, chunk = split_reduction(tiles, 1, cblocks * s, programs)
    scalars = (h, wd, ho, wo, k, k // c, tiles_w, tiles_hw, tiles, chunk, *dy.stride(),
               *x.stride(), stride[1], padding[0], padding[2], dilation[1])
    kw = dict(SH=stride[0], DH=dilation[0], R=r, S=s, NEED_I64=i64,
              ACC_DTYPE=_acc_dtype(x.dtype), **meta, **opts)
    return (s, split, cblocks), scalars, kw, (split, r * s, k)


# --------------------------------------------------------------------------------------
# grad_weight plan
# --------------------------------------------------------------------------------------
def _plan_grad_weight(dy, x, weight_size, stride, padding, dilation, groups, policy):
    name = "triton_depthwise_conv2d_grad_weight"
    _check(name, dy, x, x.shape, weight_size, groups)
    k, _, r, s = weight_size
    n, c, h, wd = x.shape
    ho, wo = check_grad_output(name, dy, x.shape, weight_size, stride, padding, dilation)
    if n * ho * wo == 0:
        return empty_plan(tuple(weight_size), False, zeros=True)
    gw = _GradWeight(dy, x, weight_size, stride, padding, dilation, policy)
    if r <= ROWS_MAX and r * s <= UNROLL_TAPS:
        tiles = (policy.grad_weight_rows_nhwc if is_channels_last(x)
                 else policy.grad_weight_rows_nchw)
    else:
        tiles = policy.grad_weight_nhwc if is_channels_last(x) else policy.grad_weight_nchw
    key = tune_key(x, dy, n, c, h, wd, k, 1, r, s, stride, padding, dilation, groups)
    # timed with its reduction: the split size trades partial traffic against parallelism
    cfg = tune(policy, tiles, key, x.device, lambda cfg: gw.launch_once(cfg, dy, x), gw.prune,
               features(ho * wo, k, 1, x.dtype, stride))
    return gw.build(cfg)


class _GradWeight:
    """grad_weight's kernels for one geometry: tap blocks x channel blocks, or the rows
    kernel (one program per kernel column); the pixel reduction split across programs."""

    def __init__(self, dy, x, weight_size, stride, padding, dilation, policy):
        self.dy, self.x = dy, x  # shapes and strides only
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight_size, self.device = tuple(weight_size), x.device
        self.part_dtype, self.i64 = _part_dtype(x.dtype), policy.needs_int64(dy, x)
        self.sms, self.policy = num_sms(x.device, 2), policy

    def kernel_args(self, cfg):
        """(kernel, grid, scalar args, constexprs and options, partial-sum size) of cfg.
        Both kernels write every element of part [split, R*S, K]: each split index has a
        program per (tap block | kernel column, channel block), which stores all of its
        taps and channels (zeros for an empty chunk)."""
        dy, x, stride, padding, dilation = self.dy, self.x, self.stride, self.padding, self.dilation
        k, _, r, s = self.weight_size
        n, c, h, wd = x.shape
        ho, wo = dy.shape[2], dy.shape[3]
        meta, opts = launch_meta(cfg)
        if cfg.get("KIND") == "rows":
            programs = meta.pop("P") * self.sms
            grid, scalars, kw, part_size = _wgrad_rows_args(meta, opts, dy, x, r, s, stride,
                                                            padding, dilation, self.i64, programs)
            return _dw_bwd_weight_rows_kernel, grid, scalars, kw, part_size
        q = n * ho * wo
        tiles = triton.cdiv(r * s, meta["TAP_BLOCK"]) * triton.cdiv(k, meta["BLOCK_C"])
        split, chunk = split_reduction(q, meta["BLOCK_P"], tiles,
                                       self.policy.grad_weight_programs_per_sm * self.sms)
        grid = (triton.cdiv(r * s, meta["TAP_BLOCK"]), triton.cdiv(k, meta["BLOCK_C"]), split)
        scalars = (h, wd, ho, wo, k, k // c, q, chunk, *dy.stride(), *x.stride(),
                   stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])
        kw = dict(R=r, S=s, NEED_I64=self.i64, ACC_DTYPE=_acc_dtype(x.dtype), **meta, **opts)
        return _dw_bwd_weight_kernel, grid, scalars, kw, (split, r * s, k)

    def launch_once(self, cfg, dy, x):
        """The kernel and its fixed-order reduction, JIT-launched (the tuner's)."""
        kernel, grid, scalars, kw, part_size = self.kernel_args(cfg)
        part = torch.empty(part_size, dtype=self.part_dtype, device=self.device)
        jit_launch(kernel, grid, dy, x, part, *scalars, **kw)
        rgrid, rscalars, rkw = split_sum_args(part_size, k=part_size[2])
        jit_launch(split_sum_kernel, rgrid, part, new_output(self.weight_size, x, False), *rscalars,
                   **rkw)

    def prune(self, cfg):
        k, _, r, s = self.weight_size
        ho, wo = self.dy.shape[2], self.dy.shape[3]
        if cfg.get("KIND") == "rows":
            return (cfg["BLOCK_C"] <= max(1, triton.next_power_of_2(k))
                    and cfg["ROWS"] <= max(2, triton.next_power_of_2(ho))
                    and cfg["BLOCK_W"] <= max(4, triton.next_power_of_2(wo)))
        return (cfg["BLOCK_C"] <= max(1, triton.next_power_of_2(k))
                and cfg["TAP_BLOCK"] <= triton.next_power_of_2(r * s))

    def build(self, cfg) -> Plan:
        kernel, grid, scalars, kw, part_size = self.kernel_args(cfg)
        fast = Launch(kernel, grid, 3, scalars, kw, self.device)
        # the [split, taps, K] partials transpose into the weight's [K, taps]
        return grad_weight_plan(fast, part_size, self.part_dtype, self.weight_size, self.device,
                                k=part_size[2])


FAMILY = Family("depthwise", POLICY, _plan_conv2d, _plan_grad_input, _plan_grad_weight)
conv2d, conv2d_grad_input, conv2d_grad_weight = FAMILY.entries()
