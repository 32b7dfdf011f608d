"""Implicit-GEMM convolution in Triton (algo="triton_igemm"): forward, grad_input, grad_weight.

Forward as a GEMM per group g:  Y[m, j] = sum_kk A[m, kk] * B[kk, j]
  m  = (n, oh, ow)             M = N*Ho*Wo
  j  = output channel in g      N = K/groups
  kk = ((r*S + s), c)           K = (C/groups)*R*S   (c innermost: contiguous in channels_last)
  A[m, kk] = x[n, g*Cg + c, oh*sh - pt + r*dh, ow*sw - pl + s*dw]  (0 outside the image)
  B[kk, j] = w[g*Kg + j, c, r, s]
A is never materialized (no im2col buffer): each tile is gathered straight from the input
through its strides, so NCHW and channels_last are both read in place.

Forward reduction loops (pointer kernel):
  * CHANNEL_BLOCKED (Cg % BLOCK_K == 0): K blocks never straddle a tap, so the image-border
    mask depends on the pixel only and the channel offsets are a plain arange. Either one
    flat loop over (tap, channel block) -- the form Triton's software pipeliner overlaps
    best when Cg is small -- or (NESTED tiles) taps outer, channel blocks inner.
  * flattened (any Cg, e.g. ResNeXt's 4 channels per group or a 3-channel stem): kk is
    decomposed per tile into (r, s, c).
PLAIN_GEMM (1x1, stride 1, no padding, dense pixels) drops the spatial decomposition: the
input is read as the matrix [N, C, H*W] / [N, H*W, C].
TMA kernel (Hopper+, KIND="tma" tiles): the plain GEMM of a dense channels_last 1x1 conv
with every tile (x as [N*H*W, C], w as [K, C], y as [N*H*W, K]) moved by TMA descriptors.
fp64 has no tensor-core dot in Triton on every target, so it takes a broadcast-multiply-sum
path (USE_DOT=False); fp32 uses tl.dot with input_precision "tf32" or "ieee".

PIX_MAJOR (NCHW activations): Triton lays a load's threads along the axis its pointers are
provably contiguous in, else along the last axis. An NCHW tile [pixels, channels] has neither
proven (pixel offsets come through // and %, channels are H*W apart), so a warp would read 32
channels of one pixel: 32 sectors for 128 bytes. PIX_MAJOR tiles build the pointers as
[channels, pixels] and transpose the loaded tile (stores likewise), so that a warp runs along
adjacent pixels. On TF32 that costs a transposed operand staging, which only pays on the
per-element gather path: see IgemmPolicy.nchw_pix_major.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
import triton
import triton.language as tl

from ._common import (Launch, TORCH_TO_TL, activation_code, apply_activation, dot_args,
                      interpreting, is_channels_last, jit_launch, mma, new_output, num_sms,
                      pixel_coords)
from ._plan import (CHANNELS_LAST, CONTIGUOUS, Family, Plan, Policy, Prefer, Steps, Tiles,
                    check_grad_output, check_groups, check_operands, check_output, empty_plan,
                    features, grad_weight_plan, launch_meta, out_hw, output_steps,
                    split_reduction, steps_on_copies, tune, tune_key)

try:  # host-side TMA descriptors (triton >= 3.4 on Hopper+); absent: pointer tiles only
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None


def reference_conv2d(x, w, bias, stride, padding, dilation, groups):
    """The plain loop nest the kernel implements (taps outer, GEMM over channels inner)."""
    n, c, h, wd = x.shape
    k, cg, r_, s_ = w.shape
    kg = k // groups
    xp = torch.nn.functional.pad(x, (padding[2], padding[3], padding[0], padding[1]))
    ho = (h + padding[0] + padding[1] - dilation[0] * (r_ - 1) - 1) // stride[0] + 1
    wo = (wd + padding[2] + padding[3] - dilation[1] * (s_ - 1) - 1) // stride[1] + 1
    y = x.new_zeros(n, k, ho, wo)
    for g in range(groups):
        for r in range(r_):
            for s in range(s_):
                h0, w0 = r * dilation[0], s * dilation[1]
                patch = xp[:, g * cg:(g + 1) * cg, h0:h0 + stride[0] * (ho - 1) + 1:stride[0],
                           w0:w0 + stride[1] * (wo - 1) + 1:stride[1]]
                y[:, g * kg:(g + 1) * kg] += torch.einsum("nchw,kc->nkhw", patch,
                                                         w[g * kg:(g + 1) * kg, :, r, s])
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------
# Tile lists per operand width, chosen on an H200 (triton 3.6, batch 32, channels_last):
# each of the 23 ResNet-50 layers timed with ~30 candidates in one run; these 8 per width
# are a greedy subset whose per-layer best is within 0.5% (geomean) of the best of all
# (dev/triton/results/igemm_tiles/). NESTED tiles won the 3x3s with Cg >= 128
# and the strided 1x1s; flat ones the 3x3 with Cg = 64, the stem and the plain 1x1s that
# TMA does not cover; TMA ones most plain 1x1s. Narrow tiles serve grouped convs (Kg < 64).
FWD_CONFIGS_16 = [
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(NESTED=True, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(KIND="tma", BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
    dict(KIND="tma", BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=2),
    dict(NESTED=True, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(KIND="tma", BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
]
FWD_CONFIGS_32 = [
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(NESTED=True, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(KIND="tma", BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(NESTED=True, BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(KIND="tma", BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(NESTED=True, BLOCK_M=256, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
]
# Candidates raced only for NCHW fp32 plans ("NCHW": True; the kernels ignore it): deeper
# reductions and more stages. Won 3 of 129 tuned NCHW keys on the H200, by 0.1-5%.
FWD_NCHW_CONFIGS_32 = [
    dict(NCHW=True, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=4),
    dict(NCHW=True, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
]
NARROW_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=3),
    dict(BLOCK_M=256, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=3),
]
INTERPRET_CONFIG = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32)
# fp64 multiplies a [M, K, N] broadcast in registers: small tiles, no tuning.
FP64_CONFIG = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=8, num_warps=4, num_stages=1)
# Output tiles are visited in column groups of GROUP_M row tiles, so that programs running
# at the same time share the same A rows and B columns in L2 (Triton's matmul tutorial).
GROUP_M = 8


@triton.jit
def _tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """Program id -> (row tile, column tile), GROUP row tiles per column sweep."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    width = GROUP * tiles_n
    first_m = (pid // width) * GROUP
    rows = tl.minimum(tiles_m - first_m, GROUP)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows
    return pid_m, pid_n


@triton.jit
def _load_pix(row_ptr, col_off, row_ok, PIX_MAJOR: tl.constexpr):
    """The tile [rows, cols] at row_ptr[:, None] + col_off[None, :] (rows = pixels), zero
    where not row_ok. PIX_MAJOR: built as [cols, rows] and transposed (see the module doc)."""
    if PIX_MAJOR:
        t = tl.load(row_ptr[None, :] + col_off[:, None], mask=row_ok[None, :], other=0.0)
        return tl.trans(t)
    else:
        return tl.load(row_ptr[:, None] + col_off[None, :], mask=row_ok[:, None], other=0.0)


@triton.jit
def _store_pix(ptr, row_off, col_off, row_ok, col_ok, val, PIX_MAJOR: tl.constexpr):
    """ptr[row_off[:, None] + col_off[None, :]] = val (rows = pixels), masked."""
    if PIX_MAJOR:
        tl.store(ptr + row_off[None, :] + col_off[:, None], tl.trans(val),
                 mask=row_ok[None, :] & col_ok[:, None])
    else:
        tl.store(ptr + row_off[:, None] + col_off[None, :], val,
                 mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _igemm_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    H, W, Ho, Wo, M, Cg, Kg,
    sxn, sxc, sxh, sxw, swk, swc, swr, sws, syn, syk, syh, syw,
    SH, SW, PT, PL, DH, DW,
    R: tl.constexpr, S: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr,
    IS_FP32: tl.constexpr, UPCAST: tl.constexpr,
    CHANNEL_BLOCKED: tl.constexpr, PLAIN_GEMM: tl.constexpr, NESTED: tl.constexpr,
    PIX_MAJOR: tl.constexpr, NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, Kg, BLOCK_M, BLOCK_N, GROUP)
    g = tl.program_id(1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    j_ok = offs_j < Kg
    hw_o = Ho * Wo
    n = offs_m // hw_o
    p = offs_m % hw_o
    oh = p // Wo
    ow = p % Wo
    kout = g * Kg + offs_j
    c0 = g * Cg
    if NEED_I64:
        n = n.to(tl.int64)
        p = p.to(tl.int64)
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        kout = kout.to(tl.int64)
        c0 = c0.to(tl.int64)
    ih0 = oh * SH - PT
    iw0 = ow * SW - PL
    x_row = x_ptr + n * sxn + c0 * sxc  # [BLOCK_M] pointers to pixel (n, ., 0, 0) of group g
    w_col = w_ptr + kout * swk          # [BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    rk = tl.arange(0, BLOCK_K)

    if PLAIN_GEMM:
        # [N*H*W, C] x [C, K]: the pixel offsets are fixed, only the channel block moves.
        a_row = x_row + p * sxw
        for cb in range(0, Cg, BLOCK_K):
            c = cb + rk
            if NEED_I64:
                c = c.to(tl.int64)
            a = _load_pix(a_row, c * sxc, m_ok, PIX_MAJOR)
            b = tl.load(w_col[None, :] + c[:, None] * swc, mask=j_ok[None, :], other=0.0)
            acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    elif CHANNEL_BLOCKED and NESTED:
        # Taps outer, channel blocks inner: the pixel offsets and border mask are computed
        # once per tap. Best where each tap has several channel blocks (Cg >= 4 blocks).
        for rs in range(R * S):
            r = rs // S
            s = rs % S
            ih = ih0 + r * DH
            iw = iw0 + s * DW
            sp_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a_row = x_row + ih * sxh + iw * sxw
            b_col = w_col + r * swr + s * sws
            for cb in range(0, Cg, BLOCK_K):
                c = cb + rk
                if NEED_I64:
                    c = c.to(tl.int64)
                a = _load_pix(a_row, c * sxc, sp_ok, PIX_MAJOR)
                b = tl.load(b_col[None, :] + c[:, None] * swc, mask=j_ok[None, :], other=0.0)
                acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    elif CHANNEL_BLOCKED:
        # One flat loop over (tap, channel block), channel block innermost: with one or two
        # channel blocks per tap (Cg = 64) the nested loop hardly pipelines; this one does.
        for kb in range(0, R * S * Cg, BLOCK_K):
            rs = kb // Cg
            cb = tl.multiple_of(kb - rs * Cg, BLOCK_K)
            r = rs // S
            s = rs - r * S
            ih = ih0 + r * DH
            iw = iw0 + s * DW
            sp_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            c = cb + rk
            if NEED_I64:
                c = c.to(tl.int64)
            a = _load_pix(x_row + ih * sxh + iw * sxw, c * sxc, sp_ok, PIX_MAJOR)
            b = tl.load((w_col + r * swr + s * sws)[None, :] + c[:, None] * swc,
                        mask=j_ok[None, :], other=0.0)
            acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    else:
        KRED = Cg * R * S
        for kb in range(0, KRED, BLOCK_K):
            kk = kb + rk
            k_ok = kk < KRED
            c = kk % Cg
            rs = kk // Cg
            r = rs // S
            s = rs % S
            if NEED_I64:
                c = c.to(tl.int64)
            if PIX_MAJOR:  # the same tile built as [kk, pixels], transposed
                ih = ih0[None, :] + (r * DH)[:, None]
                iw = iw0[None, :] + (s * DW)[:, None]
                a_ok = (m_ok[None, :] & k_ok[:, None] & (ih >= 0) & (ih < H) & (iw >= 0)
                        & (iw < W))
                a = tl.trans(tl.load(x_row[None, :] + c[:, None] * sxc + ih * sxh + iw * sxw,
                                     mask=a_ok, other=0.0))
            else:
                ih = ih0[:, None] + (r * DH)[None, :]
                iw = iw0[:, None] + (s * DW)[None, :]
                a_ok = (m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0)
                        & (iw < W))
                a = tl.load(x_row[:, None] + c[None, :] * sxc + ih * sxh + iw * sxw, mask=a_ok,
                            other=0.0)
            b = tl.load(w_col[None, :] + (c * swc + r * swr + s * sws)[:, None],
                        mask=k_ok[:, None] & j_ok[None, :], other=0.0)
            acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)

    if HAS_BIAS:
        bias = tl.load(b_ptr + kout, mask=j_ok, other=0.0).to(ACC_DTYPE)
        acc += bias[None, :]
    acc = apply_activation(acc, ACT)
    _store_pix(y_ptr, n * syn + oh * syh + ow * syw, kout * syk, m_ok, j_ok,
               acc.to(y_ptr.dtype.element_ty), PIX_MAJOR)


@triton.jit
def _igemm_fwd_tma_kernel(
    a_desc, b_desc, b_ptr, y,
    HW, M, C, K, syn, syk, syw,
    Y_TMA: tl.constexpr, OUT_DTYPE: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr,
    IS_FP32: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
):
    """PLAIN_GEMM through TMA (Hopper+): a_desc is x as the matrix [N*H*W, C], b_desc the
    weight as [K, C], and y (with Y_TMA) the output as [N*H*W, K]. The descriptors zero-fill
    loads past the matrix edges and clip stores, so the loop has no masks."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, K, BLOCK_M, BLOCK_N, GROUP)
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for cb in range(0, C, BLOCK_K):
        a = a_desc.load([m0, cb])
        b = b_desc.load([n0, cb])
        acc = mma(a, b.T, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_j = n0 + tl.arange(0, BLOCK_N)
    j_ok = offs_j < K
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_j, mask=j_ok, other=0.0).to(ACC_DTYPE)
        acc += bias[None, :]
    acc = apply_activation(acc, ACT)
    if Y_TMA:
        y.store([m0, n0], acc.to(OUT_DTYPE))
    else:
        y_off = ((offs_m // HW) * syn + (offs_m % HW) * syw)[:, None] + (offs_j * syk)[None, :]
        tl.store(y + y_off, acc.to(OUT_DTYPE), mask=(offs_m < M)[:, None] & j_ok[None, :])


# --------------------------------------------------------------------------------------
# grad_input: a transposed convolution, as an implicit GEMM over input pixels.
#   dX[m, c] = sum_{kk=(r,s,k)} dY[n, g*Kg+k, ho, wo] * w[g*Kg+k, c, r, s]
#   with ho = (h + pt - r*dh) / sh when that divides exactly and lands in [0, Ho).
# --------------------------------------------------------------------------------------
BWD_INPUT_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=3),
    dict(BLOCK_M=256, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=3),
    dict(NCHW=True, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=4),
    dict(NCHW=True, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
]


@triton.jit
def _igemm_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    H, W, Ho, Wo, M, Cg, Kg,
    syn, syk, syh, syw, swk, swc, swr, sws, sxn, sxc, sxh, sxw,
    SH, SW, PT, PL, DH, DW,
    R: tl.constexpr, S: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr, IS_FP32: tl.constexpr, UPCAST: tl.constexpr,
    CHANNEL_BLOCKED: tl.constexpr, FLAT: tl.constexpr, PIX_MAJOR: tl.constexpr,
    NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    tiles_n = tl.cdiv(Cg, BLOCK_N)
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    j_ok = offs_j < Cg
    hw = H * W
    n = offs_m // hw
    p = offs_m % hw
    ih = p // W
    iw = p % W
    cin = g * Cg + offs_j
    k0 = g * Kg
    if NEED_I64:
        n = n.to(tl.int64)
        ih = ih.to(tl.int64)
        iw = iw.to(tl.int64)
        cin = cin.to(tl.int64)
        k0 = k0.to(tl.int64)
    dy_row = dy_ptr + n * syn + k0 * syk
    w_col = w_ptr + k0 * swk + offs_j * swc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    rk = tl.arange(0, BLOCK_K)

    if CHANNEL_BLOCKED and not FLAT:
        for rs in range(R * S):
            r = rs // S
            s = rs % S
            th = ih + PT - r * DH
            tw = iw + PL - s * DW
            oh = th // SH
            ow = tw // SW
            sp_ok = (m_ok & (th >= 0) & (tw >= 0) & (th % SH == 0) & (tw % SW == 0)
                     & (oh < Ho) & (ow < Wo))
            a_row = dy_row + oh * syh + ow * syw
            b_col = w_col + r * swr + s * sws
            for kb in range(0, Kg, BLOCK_K):
                kk = kb + rk
                if NEED_I64:
                    kk = kk.to(tl.int64)
                a = _load_pix(a_row, kk * syk, sp_ok, PIX_MAJOR)
                b = tl.load(b_col[None, :] + kk[:, None] * swk, mask=j_ok[None, :], other=0.0)
                acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    elif CHANNEL_BLOCKED:
        # FLAT (Kg <= 2 blocks): one loop over (tap, channel block), as the forward's flat
        # tiles; with so few channel blocks per tap the nested loop barely pipelines.
        for kq in range(0, R * S * Kg, BLOCK_K):
            rs = kq // Kg
            kb = tl.multiple_of(kq - rs * Kg, BLOCK_K)
            r = rs // S
            s = rs - r * S
            th = ih + PT - r * DH
            tw = iw + PL - s * DW
            oh = th // SH
            ow = tw // SW
            sp_ok = (m_ok & (th >= 0) & (tw >= 0) & (th % SH == 0) & (tw % SW == 0)
                     & (oh < Ho) & (ow < Wo))
            kk = kb + rk
            if NEED_I64:
                kk = kk.to(tl.int64)
            a = _load_pix(dy_row + oh * syh + ow * syw, kk * syk, sp_ok, PIX_MAJOR)
            b = tl.load((w_col + r * swr + s * sws)[None, :] + kk[:, None] * swk,
                        mask=j_ok[None, :], other=0.0)
            acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    else:
        KRED = Kg * R * S
        for kb in range(0, KRED, BLOCK_K):
            kq = kb + rk
            q_ok = kq < KRED
            kk = kq % Kg
            rs = kq // Kg
            r = rs // S
            s = rs % S
            if NEED_I64:
                kk = kk.to(tl.int64)
            if PIX_MAJOR:  # the same tile built as [kq, pixels], transposed
                th = ih[None, :] + PT - (r * DH)[:, None]
                tw = iw[None, :] + PL - (s * DW)[:, None]
                oh = th // SH
                ow = tw // SW
                a_ok = (m_ok[None, :] & q_ok[:, None] & (th >= 0) & (tw >= 0) & (th % SH == 0)
                        & (tw % SW == 0) & (oh < Ho) & (ow < Wo))
                a = tl.trans(tl.load(dy_row[None, :] + kk[:, None] * syk + oh * syh + ow * syw,
                                     mask=a_ok, other=0.0))
            else:
                th = ih[:, None] + PT - (r * DH)[None, :]
                tw = iw[:, None] + PL - (s * DW)[None, :]
                oh = th // SH
                ow = tw // SW
                a_ok = (m_ok[:, None] & q_ok[None, :] & (th >= 0) & (tw >= 0) & (th % SH == 0)
                        & (tw % SW == 0) & (oh < Ho) & (ow < Wo))
                a = tl.load(dy_row[:, None] + kk[None, :] * syk + oh * syh + ow * syw, mask=a_ok,
                            other=0.0)
            b = tl.load(w_col[None, :] + (kk * swk + r * swr + s * sws)[:, None],
                        mask=q_ok[:, None] & j_ok[None, :], other=0.0)
            acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)

    _store_pix(dx_ptr, n * sxn + ih * sxh + iw * sxw, cin * sxc, m_ok, j_ok,
               acc.to(dx_ptr.dtype.element_ty), PIX_MAJOR)


# --------------------------------------------------------------------------------------
# grad_weight: dW[i, (c, r, s)] = sum_{q=(n, oh, ow)} dY[n, g*Kg+i, oh, ow] * x[n, g*Cg+c, ih, iw]
# The reduction (N*Ho*Wo) is long and the output small, so the reduction is split into
# SPLIT chunks written to an fp32 buffer and summed in a fixed order: deterministic, no atomics.
# --------------------------------------------------------------------------------------
BWD_WEIGHT_CONFIGS = [
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(NCHW=True, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(NCHW=True, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
    dict(NCHW=True, BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3),
]
WGRAD_INTERPRET_CONFIG = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32)


@triton.jit
def _igemm_bwd_weight_kernel(
    dy_ptr, x_ptr, part_ptr,
    H, W, Ho, Wo, Q, Cg, Kg, CHUNK,
    syn, syk, syh, syw, sxn, sxc, sxh, sxw,
    SH, SW, PT, PL, DH, DW,
    R: tl.constexpr, S: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr, IS_FP32: tl.constexpr, UPCAST: tl.constexpr,
    TAP_BLOCKED: tl.constexpr, PIX_MAJOR: tl.constexpr, NEED_I64: tl.constexpr,
    ACC_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    split = tl.program_id(2)
    JRED = Cg * R * S
    tiles_n = tl.cdiv(JRED, BLOCK_N)
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n
    offs_i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)   # output channel in group
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)   # (r, s, c), c innermost
    i_ok = offs_i < Kg
    j_ok = offs_j < JRED
    if TAP_BLOCKED:
        # Cg % BLOCK_N == 0: the tile's columns share one tap, so the input's border mask
        # and pixel offsets are per pixel (1-D), not per element.
        rs = (pid_n * BLOCK_N) // Cg
        c = pid_n * BLOCK_N - rs * Cg + tl.arange(0, BLOCK_N)
    else:
        c = offs_j % Cg
        rs = offs_j // Cg
    r = rs // S
    s = rs % S
    kout = g * Kg + offs_i
    cin = g * Cg + c
    if NEED_I64:
        kout = kout.to(tl.int64)
        cin = cin.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    q_lo = split * CHUNK
    q_hi = tl.minimum(q_lo + CHUNK, Q)
    for qb in range(q_lo, q_hi, BLOCK_K):
        q = qb + tl.arange(0, BLOCK_K)
        q_ok = q < q_hi
        n, oh, ow = pixel_coords(q, Ho, Wo, NEED_I64)
        a = tl.load(dy_ptr + (kout * syk)[:, None] + (n * syn + oh * syh + ow * syw)[None, :],
                    mask=i_ok[:, None] & q_ok[None, :], other=0.0)
        # dy's tile [i, q] already has the pixels last; x's [q, (r, s, c)] is built as
        # [(r, s, c), q] under PIX_MAJOR.
        if TAP_BLOCKED:
            ih = oh * SH - PT + r * DH
            iw = ow * SW - PL + s * DW
            b_ok = q_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            b = _load_pix(x_ptr + n * sxn + ih * sxh + iw * sxw, cin * sxc, b_ok, PIX_MAJOR)
        elif PIX_MAJOR:
            ih = (oh * SH - PT)[None, :] + (r * DH)[:, None]
            iw = (ow * SW - PL)[None, :] + (s * DW)[:, None]
            b_ok = q_ok[None, :] & j_ok[:, None] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            b = tl.trans(tl.load(x_ptr + (n * sxn)[None, :] + (cin * sxc)[:, None] + ih * sxh
                                 + iw * sxw, mask=b_ok, other=0.0))
        else:
            ih = (oh * SH - PT)[:, None] + (r * DH)[None, :]
            iw = (ow * SW - PL)[:, None] + (s * DW)[None, :]
            b_ok = q_ok[:, None] & j_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            b = tl.load(x_ptr + (n * sxn)[:, None] + (cin * sxc)[None, :] + ih * sxh + iw * sxw,
                        mask=b_ok, other=0.0)
        acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    # partial buffer [SPLIT, K, Cg, R, S] (contiguous, the weight's own order)
    w_off = (kout * JRED)[:, None] + (c * (R * S) + rs)[None, :]
    base = split.to(tl.int64) * (Kg * JRED * tl.num_programs(1))
    tl.store(part_ptr + base + w_off, acc, mask=i_ok[:, None] & j_ok[None, :])


# --------------------------------------------------------------------------------------
# Policy: every choice the plans make, as data
# --------------------------------------------------------------------------------------
# First sight (no tuned or shipped tile; Tiles.heuristic): the rules follow the H200
# measurements above -- TMA for the plain 1x1s it covers, NESTED for 3x3s with Cg >= 128 and
# strided 1x1s, flat tiles elsewhere, narrow tiles for Kg < 64 -- plus one unmeasured rule:
# a problem with under 2^20 output elements fills fewer than one wave of 128x64 tiles on a
# 132-SM GPU, so it takes a 64-row tile (twice the programs). Indices into the lists below.
FWD16_FIRST_SIGHT = (
    Prefer((8, 9, 10), {"channels": (None, 64)}),
    Prefer((4, 2, 0), {"work": (None, 1 << 20)}),  # NESTED 64x64, TMA, flat
    Prefer((2, 1, 0), {"cg": (128, None)}),        # TMA, NESTED 128x128, flat
    Prefer((2, 0)),                                # TMA, flat
)
FWD32_FIRST_SIGHT = (
    Prefer((10, 11, 12), {"channels": (None, 64)}),
    Prefer((3, 4, 7, 0), {"work": (None, 1 << 20)}),  # NESTED 64x128, TMA 128x64, flat 64x64
    Prefer((2, 1, 0), {"cg": (128, None)}),
    Prefer((2, 0)),
)
GRAD_INPUT_FIRST_SIGHT = (
    Prefer((5, 6, 7), {"channels": (None, 64)}),
    Prefer((4, 1), {"work": (None, 1 << 20)}),     # 64x64, 128x64
)
FWD16_TILES = Tiles("igemm_fwd16", tuple(FWD_CONFIGS_16 + NARROW_CONFIGS), INTERPRET_CONFIG,
                    FWD16_FIRST_SIGHT)
FWD32_TILES = Tiles("igemm_fwd32", tuple(FWD_CONFIGS_32 + FWD_NCHW_CONFIGS_32 + NARROW_CONFIGS),
                    INTERPRET_CONFIG, FWD32_FIRST_SIGHT)
GRAD_INPUT_TILES = Tiles("igemm_bwd_input", tuple(BWD_INPUT_CONFIGS), INTERPRET_CONFIG,
                         GRAD_INPUT_FIRST_SIGHT)
# grad_weight splits its pixel reduction to fill the GPU whatever the tile: no size rule,
# the first tile its prune keeps (the prune drops tiles wider than Kg or Cg*R*S).
GRAD_WEIGHT_TILES = Tiles("igemm_bwd_weight", tuple(BWD_WEIGHT_CONFIGS), WGRAD_INTERPRET_CONFIG)
_EVERY_KIND = frozenset({"1x1", "kxk", "gather"})


@dataclasses.dataclass(frozen=True)
class IgemmPolicy(Policy):
    """The implicit GEMM's choices. Defaults: what was measured best on an H200.

    NCHW fp32 plans (other dtypes keep the channel-order tiles: not measured) make three
    choices per direction and layer kind, measured on ResNet-50 at batch 32, TF32
    (dev/triton/results/igemm_nchw/, per-layer times of every choice in round1.log, round2.log).
    TF32 tensor cores read both operands K-major (the reduction index contiguous); NCHW
    activations are pixel-contiguous, so the forward's and grad_input's activation tiles
    need a transpose somewhere, and so do NCHW weights. Layer kinds: "1x1", "kxk", and
    "gather" (Cg not a multiple of 16: the per-element kk decomposition, e.g. the RGB stem).
    """
    fwd16: Tiles = FWD16_TILES          # 16-bit operands (BLOCK_K 64)
    fwd32: Tiles = FWD32_TILES          # fp32 (BLOCK_K 32) and fp64 under the interpreter
    grad_input: Tiles = GRAD_INPUT_TILES
    grad_weight: Tiles = GRAD_WEIGHT_TILES
    fp64: Mapping = dataclasses.field(default_factory=lambda: dict(FP64_CONFIG))
    narrow_n: int = 64        # tiles narrower than this only where Kg < narrow_n
    short_k_stages: int = 2   # 2-stage tiles only for reductions of <= 2 blocks (C = 64 1x1)
    # grad_input loop, measured on an H200 (bf16, batch 32): the flat loop won at Kg=64
    # (3x3@56: 31 vs 37 us) and lost at Kg >= 256 (1x1 1024->256@14: 20 vs 12 us).
    grad_input_flat_blocks: int = 2
    # PIX_MAJOR tiles (module doc): only the stem's forward gains (168 vs 339 us); elsewhere
    # Triton's transposed TF32 operand staging costs more than the scattered loads it saves
    # (e.g. 3x3 256@14 forward 226 vs 154 us, grad_input 396 vs 316).
    nchw_pix_major: Mapping = dataclasses.field(default_factory=lambda: {
        "fwd": frozenset({"gather"}), "grad_input": frozenset(), "grad_weight": frozenset()})
    # Copy the weight per call into the order in which the GEMM's reduction index is
    # contiguous: the forward reduces over c (channels_last weight), grad_input over k (k
    # innermost). NCHW 3x3 weights have neither contiguous (c is R*S apart), nor has a 1x1
    # weight k: forward 3x3 65-112 vs 117-220 us, grad_input 32-289 vs 64-1223 us.
    nchw_weight_copy: Mapping = dataclasses.field(default_factory=lambda: {
        "fwd": frozenset({"kxk", "gather"}), "grad_input": frozenset({"1x1", "kxk"})})
    # fp32 convs that run through the channels_last kernels on transposed copies (x/dy and
    # the weight in, the result back to NCHW), where the output plane (Ho*Wo) is at most
    # nchw_via_cl_max_plane: there the copies are cheap and the channels_last tiles fast (3x3
    # grad_input at 14x14 and 7x7: 70-198 vs 75-289 us; forward at 7x7: 76-95 vs 99-112
    # us). On larger planes and on 1x1 layers the copies cost more than they save.
    nchw_via_channels_last: Mapping = dataclasses.field(default_factory=lambda: {
        "fwd": frozenset({"kxk"}), "grad_input": frozenset({"kxk"}),
        "grad_weight": frozenset()})
    nchw_via_cl_max_plane: Mapping = dataclasses.field(default_factory=lambda: {
        "fwd": 7 * 7, "grad_input": 14 * 14, "grad_weight": 0})
    # The forward's "gather" choices were timed on ResNet-50's 7x7 stem only. Applied to
    # MobileNetV2/EfficientNet-B0 (3x3 stems, 1x1 layers with 24/40 channels) the whole
    # TF32 forward went from 2.50 to 2.79 ms and 3.45 to 3.90 ms (CUDA graphs, H200): below
    # this many taps they keep the channel-order tiles.
    gather_min_taps: int = 49
    # Tap-blocked grad_weight tiles where Cg % BLOCK_N == 0: per-pixel instead of
    # per-element index math for x's tile. H200, TF32, NCHW ResNet-50 layers: 77-262 vs
    # 108-303 us; on channels_last copies 86-232 vs 89-241 us. fp32 only: 16-bit
    # grad_weight was not timed with it.
    grad_weight_tap_blocked: bool = True
    grad_weight_programs_per_sm: int = 2  # the split of the pixel reduction aims at this

    def every_nchw_choice(self, pix_major=True, weight_copy=False, via_channels_last=False,
                          tap_blocked=False, gather_min_taps=0) -> "IgemmPolicy":
        """Each NCHW choice on (or off) for every direction and layer kind (tests and
        experiments reach every kernel variant with it)."""
        dirs = ("fwd", "grad_input", "grad_weight")
        on = lambda flag: {d: _EVERY_KIND if flag else frozenset() for d in dirs}  # noqa: E731
        return dataclasses.replace(
            self, nchw_pix_major=on(pix_major),
            nchw_weight_copy={d: v for d, v in on(weight_copy).items() if d != "grad_weight"},
            nchw_via_channels_last=on(via_channels_last),
            nchw_via_cl_max_plane={d: 1 << 30 for d in dirs},
            grad_weight_tap_blocked=tap_blocked, gather_min_taps=gather_min_taps)

    def nchw_kind(self, direction, r, s, cg):
        """The layer kind for the NCHW choices of `direction` (None: none apply)."""
        kind = _kind(r, s, cg)
        if direction == "fwd" and kind == "gather" and r * s < self.gather_min_taps:
            return None  # not timed: the channel-order tiles as before
        return kind

    def via_channels_last(self, direction, act, r, s, cg, plane):
        """act: the activation-like operand (x or dy); plane: the forward's Ho*Wo."""
        return (_kind(r, s, cg) in self.nchw_via_channels_last[direction]
                and plane <= self.nchw_via_cl_max_plane[direction]
                and act.dtype == torch.float32 and _nchw(act))


POLICY = IgemmPolicy()


def _kind(r, s, cg):
    if cg % 16:
        return "gather"
    return "1x1" if r == 1 and s == 1 else "kxk"


def _nchw(*tensors):
    """Every tensor has adjacent pixels along W and non-adjacent channels (NCHW-like)."""
    return all(t.stride(3) == 1 and t.stride(1) != 1 for t in tensors)


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


# The weight copies some NCHW tiles read, as dim orders (outermost first) for Steps' copies.
C_MAJOR = (0, 2, 3, 1)  # channels_last: c innermost
K_MAJOR = (1, 2, 3, 0)  # k innermost


def _c_major(w):
    return w.contiguous(memory_format=torch.channels_last)


def _k_major(w):
    return w.permute(*K_MAJOR).contiguous().permute(3, 0, 1, 2)


def _pick(policy, tiles, key, t, launch, prune, shape):
    """The tile: fp64 on a GPU has one fixed tile (a [M, K, N] broadcast in registers)."""
    if t.dtype == torch.float64 and t.device.type == "cuda" and tiles.name not in policy.force:
        return dict(policy.fp64)
    return tune(policy, tiles, key, t.device, launch, prune, shape)


def _fits(cfg, kred, width):
    """Tiles no wider than the problem (BLOCK_N <= pow2(width), BLOCK_K <= pow2(kred))."""
    return (cfg["BLOCK_N"] <= max(16, triton.next_power_of_2(width))
            and cfg["BLOCK_K"] <= max(16, triton.next_power_of_2(kred)))


def _tma_device(device):
    """TMA descriptors: Hopper and later, or the interpreter (which emulates them)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 9
    return interpreting()


def _tma_gemm_ok(x, w, groups, i64):
    """A 1x1/stride-1 conv reads x as the matrix [N*H*W, C] and w as [K, C] through TMA:
    both need unit channel stride, dense rows and 16-byte aligned row strides. (TMA boxes
    for 3x3 taps -- shifted pixel rows with the border rows zeroed -- were correct but
    20-35% slower than the pointer tiles on every ResNet-50 3x3 layer: not used.)"""
    n, c, h, wd = x.shape
    return (TensorDescriptor is not None and groups == 1 and not i64
            and x.dtype != torch.float64 and _tma_device(x.device)
            and x.stride(1) == 1 and x.stride(3) == c and x.stride(2) == wd * c
            and (n == 1 or x.stride(0) == h * wd * c)
            and w.stride(1) == 1 and w.stride(0) == c
            and (c * x.element_size()) % 16 == 0)


def _tma_store_ok(y):
    """y as the matrix [N*Ho*Wo, K] (channels_last, or 1x1 pixels), rows 16-byte aligned."""
    n, k, ho, wo = y.shape
    return (y.stride(1) == 1 and y.stride(3) == k and y.stride(2) == wo * k
            and (n == 1 or y.stride(0) == ho * wo * k) and (k * y.element_size()) % 16 == 0)


def _aligned(*tensors):
    return all(t.data_ptr() % 16 == 0 for t in tensors)


# --------------------------------------------------------------------------------------
# Forward plan: choose (layout detour, kernel variant, tile), then build the launches
# --------------------------------------------------------------------------------------
def _plan_conv2d(x, w, bias, stride, padding, dilation, groups, activation, policy):
    name = "triton_igemm_conv2d"
    check_operands(name, x, w)
    check_groups(name, x.shape, w.shape, groups)
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    ho, wo = out_hw(h, wd, r, s, stride, padding, dilation)
    check_output(name, ho, wo)
    if policy.via_channels_last("fwd", x, r, s, cg, ho * wo) and not is_channels_last(w):
        inner = _plan_conv2d(_cl(x), _cl(w), bias, stride, padding, dilation, groups,
                             activation, policy)
        return Plan(lambda x, w, bias: inner.run(_cl(x), _cl(w), bias).contiguous(),
                    *inner.launches, steps=steps_on_copies(inner, CHANNELS_LAST, CHANNELS_LAST,
                                                           CONTIGUOUS))
    cl = is_channels_last(x) or is_channels_last(w)
    if n * ho * wo == 0:
        return empty_plan((n, k, ho, wo), cl)
    fwd = _Forward(x, w, (n, k, ho, wo), cl, stride, padding, dilation, groups, activation,
                   policy)
    tiles = policy.fwd16 if x.dtype in (torch.float16, torch.bfloat16) else policy.fwd32
    b0 = None if bias is None else bias.contiguous()
    y = new_output(fwd.size, x, cl)
    cfg = _pick(policy, tiles, fwd.key, x, lambda cfg: fwd.launch_once(cfg, x, fwd.w(w), b0, y),
                fwd.prune, features(fwd.m, fwd.kg, cg, x.dtype, stride))
    return fwd.build(cfg, bias is not None)


class _Forward:
    """One forward geometry's variant: the choices that hold for every tile, and how a
    tile becomes launch arguments."""

    def __init__(self, x, w, size, cl, stride, padding, dilation, groups, activation, policy):
        n, c, h, wd = x.shape
        k, cg, r, s = w.shape
        _, _, ho, wo = size
        self.size, self.cl, self.groups, self.device = size, cl, groups, x.device
        self.m, self.c, self.k, self.cg, self.kg = n * ho * wo, c, k, cg, k // groups
        self.kred = cg * r * s
        self.policy = policy
        y = new_output(size, x, cl)  # for its strides
        self.plain = (r == 1 and s == 1 and tuple(stride) == (1, 1)
                      and tuple(padding) == (0, 0, 0, 0)
                      and x.stride(2) == wd * x.stride(3) and y.stride(2) == wo * y.stride(3))
        i64 = policy.needs_int64(x, w, y)
        self.tma = self.plain and _tma_gemm_ok(x, w, groups, i64)
        self.tma_now = self.tma and _aligned(x, w)  # the tuner's tensors
        self.y_tma = self.tma and _tma_store_ok(y)
        self.nchw = x.dtype == torch.float32 and _nchw(x, y)
        kind = policy.nchw_kind("fwd", r, s, cg)
        pm = self.nchw and kind in policy.nchw_pix_major["fwd"]
        self.w_copy = self.nchw and kind in policy.nchw_weight_copy["fwd"] and w.stride(1) != 1
        ws = self.w(w).stride()
        self.scalars = (h, wd, ho, wo, self.m, cg, self.kg, *x.stride(), *ws, *y.stride(),
                        stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])
        self.tma_scalars = (ho * wo, self.m, c, k, y.stride(0), y.stride(1), y.stride(3))
        self.const = dict(ACT=activation_code(activation), GROUP=GROUP_M, **dot_args(x.dtype))
        self.ptr_const = dict(R=r, S=s, PIX_MAJOR=pm, NEED_I64=i64)  # the pointer kernel's
        self.out_dtype = TORCH_TO_TL[y.dtype]
        self.key = tune_key(x, w, n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups,
                            "pm" if pm else "", "wcopy" if self.w_copy else "")

    def w(self, w):
        """The weight as the kernel reads it (copied channels-innermost where chosen)."""
        return _c_major(w) if self.w_copy else w

    def grid(self, meta):
        return (triton.cdiv(self.m, meta["BLOCK_M"]) * triton.cdiv(self.kg, meta["BLOCK_N"]),
                self.groups)

    def kernel_args(self, cfg, has_bias):
        """(grid, constexprs and options) of the pointer kernel."""
        meta, opts = launch_meta(cfg)
        nested = meta.pop("NESTED", False)
        blocked = self.cg % meta["BLOCK_K"] == 0
        return self.grid(meta), dict(HAS_BIAS=has_bias, CHANNEL_BLOCKED=blocked,
                                     PLAIN_GEMM=self.plain and blocked, NESTED=nested,
                                     **self.ptr_const, **self.const, **meta, **opts)

    def tma_args(self, cfg, has_bias, store_tma):
        """(grid, constexprs and options) of the TMA kernel."""
        meta, opts = launch_meta(cfg)
        meta.pop("NESTED", None)
        return self.grid(meta), dict(Y_TMA=store_tma, OUT_DTYPE=self.out_dtype,
                                     HAS_BIAS=has_bias, **self.const, **meta, **opts)

    def descriptors(self, cfg, x, w, y, store_tma):
        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        m, c, k = self.m, self.c, self.k
        return (TensorDescriptor(x, [m, c], [c, 1], [bm, bk]),
                TensorDescriptor(w, [k, c], [c, 1], [bn, bk]),
                TensorDescriptor(y, [m, k], [k, 1], [bm, bn]) if store_tma else y)

    def launch_once(self, cfg, x, w, b, y):
        """One JIT launch of cfg (the tuner's). A call whose tensors start off the 16-byte
        grid (a view) cannot use TMA: it runs the same tile through pointers."""
        if cfg.get("KIND") == "tma" and self.tma and _aligned(x, w):
            store_tma = self.y_tma and _aligned(y)
            grid, kw = self.tma_args(cfg, b is not None, store_tma)
            a_desc, b_desc, y_arg = self.descriptors(cfg, x, w, y, store_tma)
            jit_launch(_igemm_fwd_tma_kernel, grid, a_desc, b_desc, w if b is None else b, y_arg,
                       *self.tma_scalars, **kw)
            return
        grid, kw = self.kernel_args(cfg, b is not None)
        jit_launch(_igemm_fwd_kernel, grid, x, w, w if b is None else b, y, *self.scalars, **kw)

    def prune(self, cfg):
        p = self.policy
        if not _fits(cfg, self.kred, self.kg) or (cfg.get("KIND") == "tma" and not self.tma_now):
            return False
        if cfg.get("NCHW") and not self.nchw:
            return False
        if cfg["BLOCK_N"] < p.narrow_n <= self.kg:
            return False
        if (cfg["num_stages"] <= p.short_k_stages
                and triton.cdiv(self.kred, cfg["BLOCK_K"]) > p.short_k_stages):
            return False
        # NESTED only changes the loop of channel-blocked convs with taps or strides
        return not cfg.get("NESTED") or (self.cg % cfg["BLOCK_K"] == 0 and not self.plain)

    def build(self, cfg, has_bias) -> Plan:
        grid, kw = self.kernel_args(cfg, has_bias)
        fast = Launch(_igemm_fwd_kernel, grid, 4, self.scalars, kw, self.device)
        size, cl = self.size, self.cl
        if cfg.get("KIND") == "tma" and self.tma:
            # Descriptors wrap each call's tensors (~1 us each); a call whose tensors start
            # off the 16-byte grid (a view) runs the same tile through pointers.
            tma_grid, tma_kw = self.tma_args(cfg, has_bias, self.y_tma)
            fast_tma = Launch(_igemm_fwd_tma_kernel, tma_grid, 4, self.tma_scalars, tma_kw,
                              self.device)
            descriptors, y_tma = self.descriptors, self.y_tma

            def run(x, w, bias):
                y = new_output(size, x, cl)
                b = w if bias is None else bias.contiguous()
                if _aligned(x, w, y):
                    a_desc, b_desc, y_arg = descriptors(cfg, x, w, y, y_tma)
                    fast_tma(a_desc, b_desc, b, y_arg)
                else:
                    fast(x, w, b, y)
                return y
            return Plan(run, fast_tma, fast)
        w_copy = self.w_copy

        def run(x, w, bias):
            y = new_output(size, x, cl)
            if w_copy:
                w = _c_major(w)
            fast(x, w, w if bias is None else bias.contiguous(), y)
            return y
        if w_copy:  # slot 3: the copy, 4: the output
            steps = Steps(buffers=(("copy", 1, C_MAJOR), (tuple(size), cl, 0)),
                          launches=((fast, (0, 3, 2, 4)),), result=4)
        else:
            steps = output_steps(fast, size, cl, (0, 1, 2, 3))
        return Plan(run, fast, steps=steps)


# --------------------------------------------------------------------------------------
# grad_input plan
# --------------------------------------------------------------------------------------
def _plan_grad_input(dy, w, input_size, stride, padding, dilation, groups, policy):
    name = "triton_igemm_conv2d_grad_input"
    check_operands(name, dy, w)
    check_groups(name, input_size, w.shape, groups, "input_size")
    n, c, h, wd = input_size
    k, cg, r, s = w.shape
    ho, wo = check_grad_output(name, dy, input_size, w.shape, stride, padding, dilation)
    if policy.via_channels_last("grad_input", dy, r, s, cg, ho * wo):
        # the weight k-innermost (as the tensor cores read it) where the copy is on
        k_major = _kind(r, s, cg) in policy.nchw_weight_copy["grad_input"]
        w_as = _k_major if k_major else _cl
        inner = _plan_grad_input(_cl(dy), w_as(w), input_size, stride, padding, dilation,
                                 groups, policy)
        steps = steps_on_copies(inner, CHANNELS_LAST, K_MAJOR if k_major else CHANNELS_LAST,
                                CONTIGUOUS)
        return Plan(lambda dy, w: inner.run(_cl(dy), w_as(w)).contiguous(), *inner.launches,
                    steps=steps)
    cl = is_channels_last(dy)
    if n * h * wd == 0:
        return empty_plan((n, c, h, wd), cl)
    gin = _GradInput(dy, w, input_size, cl, stride, padding, dilation, groups, policy)
    dx = new_output(gin.size, dy, cl)
    cfg = _pick(policy, policy.grad_input, gin.key, dy,
                lambda cfg: gin.launch_once(cfg, dy, gin.w(w), dx), gin.prune,
                features(gin.m, cg, gin.kg, dy.dtype, stride))
    return gin.build(cfg)


class _GradInput:
    """grad_input's variant for one geometry: a transposed conv as an implicit GEMM over
    input pixels, reducing over (tap, k)."""

    def __init__(self, dy, w, input_size, cl, stride, padding, dilation, groups, policy):
        n, c, h, wd = input_size
        k, cg, r, s = w.shape
        ho, wo = dy.shape[2], dy.shape[3]
        self.size, self.cl, self.groups, self.device = tuple(input_size), cl, groups, dy.device
        self.m, self.cg, self.kg, self.policy = n * h * wd, cg, k // groups, policy
        dx = new_output(self.size, dy, cl)  # for its strides
        nchw = dy.dtype == torch.float32 and _nchw(dy, dx)
        self.nchw = nchw
        kind = policy.nchw_kind("grad_input", r, s, cg)
        pm = nchw and kind in policy.nchw_pix_major["grad_input"]
        # channels_last fp32 too: a channels_last weight has c, not k, innermost (H200,
        # TF32, the channels_last kernel alone on ResNet-50 layers: 19-176 vs 57-470 us)
        self.w_copy = ((nchw or (cl and dy.dtype == torch.float32))
                       and kind in policy.nchw_weight_copy["grad_input"] and w.stride(0) != 1)
        self.scalars = (h, wd, ho, wo, self.m, cg, self.kg, *dy.stride(), *self.w(w).stride(),
                        *dx.stride(), stride[0], stride[1], padding[0], padding[2], dilation[0],
                        dilation[1])
        self.const = dict(R=r, S=s, PIX_MAJOR=pm, NEED_I64=policy.needs_int64(dy, w, dx),
                          **dot_args(dy.dtype))
        self.key = tune_key(dy, w, n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups,
                            "pm" if pm else "", "wcopy" if self.w_copy else "")
        self.kred = self.kg * r * s

    def w(self, w):
        """The weight as the kernel reads it (copied k-innermost where chosen)."""
        return _k_major(w) if self.w_copy else w

    def kernel_args(self, cfg):
        meta, opts = launch_meta(cfg)
        grid = (triton.cdiv(self.m, meta["BLOCK_M"]) * triton.cdiv(self.cg, meta["BLOCK_N"]),
                self.groups)
        return grid, dict(CHANNEL_BLOCKED=self.kg % meta["BLOCK_K"] == 0,
                          FLAT=self.kg <= self.policy.grad_input_flat_blocks * meta["BLOCK_K"],
                          **self.const, **meta, **opts)

    def launch_once(self, cfg, dy, w, dx):
        grid, kw = self.kernel_args(cfg)
        jit_launch(_igemm_bwd_input_kernel, grid, dy, w, dx, *self.scalars, **kw)

    def prune(self, cfg):
        # narrow tiles (grouped convs' few channels) only where the output is narrow
        return (_fits(cfg, self.kred, self.cg)
                and not cfg["BLOCK_N"] < self.policy.narrow_n <= self.cg
                and (self.nchw or not cfg.get("NCHW")))

    def build(self, cfg) -> Plan:
        grid, kw = self.kernel_args(cfg)
        fast = Launch(_igemm_bwd_input_kernel, grid, 3, self.scalars, kw, self.device)
        size, cl, w_as = self.size, self.cl, self.w

        def run(dy, w):
            dx = new_output(size, dy, cl)
            fast(dy, w_as(w), dx)
            return dx
        if self.w_copy:  # slot 3: the copy, 4: the output
            steps = Steps(buffers=(("copy", 1, K_MAJOR), (tuple(size), cl, 0)),
                          launches=((fast, (0, 3, 4)),), result=4)
        else:
            steps = output_steps(fast, size, cl, (0, 1, 3))
        return Plan(run, fast, steps=steps)


# --------------------------------------------------------------------------------------
# grad_weight plan: split over pixels into fp32 partials, then the fixed-order split sum
# --------------------------------------------------------------------------------------
def _plan_grad_weight(dy, x, weight_size, stride, padding, dilation, groups, policy):
    name = "triton_igemm_conv2d_grad_weight"
    check_operands(name, dy, x)
    check_groups(name, x.shape, weight_size, groups)
    k, cg, r, s = weight_size
    n, c, h, wd = x.shape
    ho, wo = check_grad_output(name, dy, x.shape, weight_size, stride, padding, dilation)
    if policy.via_channels_last("grad_weight", x, r, s, cg, ho * wo) and _nchw(dy):
        inner = _plan_grad_weight(_cl(dy), _cl(x), weight_size, stride, padding, dilation,
                                  groups, policy)
        return Plan(lambda dy, x: inner.run(_cl(dy), _cl(x)), *inner.launches,
                    steps=steps_on_copies(inner, CHANNELS_LAST, CHANNELS_LAST))
    if n * ho * wo == 0:
        return empty_plan(tuple(weight_size), False, zeros=True)
    gw = _GradWeight(dy, x, weight_size, stride, padding, dilation, groups, policy)
    cfg = _pick(policy, policy.grad_weight, gw.key, x, lambda cfg: gw.launch_once(cfg, dy, x),
                gw.prune, features(gw.q, gw.kg, cg, x.dtype, stride))
    return gw.build(cfg)


class _GradWeight:
    """grad_weight's variant for one geometry: dW[i, (r, s, c)] reduced over the pixels q,
    the reduction split across programs (deterministic: no atomics)."""

    def __init__(self, dy, x, weight_size, stride, padding, dilation, groups, policy):
        k, cg, r, s = weight_size
        n, c, h, wd = x.shape
        ho, wo = dy.shape[2], dy.shape[3]
        self.weight_size, self.groups, self.device = tuple(weight_size), groups, x.device
        self.q, self.cg, self.kg, self.jred = n * ho * wo, cg, k // groups, cg * r * s
        self.part_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.programs = policy.grad_weight_programs_per_sm * num_sms(x.device, 4)
        self.nchw = x.dtype == torch.float32 and _nchw(x)
        pm = self.nchw and _kind(r, s, cg) in policy.nchw_pix_major["grad_weight"]
        self.tap_blocked = policy.grad_weight_tap_blocked and x.dtype == torch.float32
        self.scalars = (h, wd, ho, wo, self.q, cg, self.kg)
        self.strides = (*dy.stride(), *x.stride(), stride[0], stride[1], padding[0], padding[2],
                        dilation[0], dilation[1])
        self.const = dict(R=r, S=s, PIX_MAJOR=pm, NEED_I64=policy.needs_int64(dy, x),
                          **dot_args(x.dtype))
        self.key = tune_key(x, dy, n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups,
                            "pm" if pm else "", "tb" if self.tap_blocked else "")

    def kernel_args(self, cfg):
        """(grid, scalar args, constexprs and options, partial-sum size) of cfg."""
        meta, opts = launch_meta(cfg)
        tiles = triton.cdiv(self.kg, meta["BLOCK_M"]) * triton.cdiv(self.jred, meta["BLOCK_N"])
        split, chunk = split_reduction(self.q, meta["BLOCK_K"], tiles * self.groups,
                                       self.programs, min_blocks=4)
        kw = dict(TAP_BLOCKED=self.tap_blocked and self.cg % meta["BLOCK_N"] == 0,
                  **self.const, **meta, **opts)
        return ((tiles, self.groups, split), (*self.scalars, chunk, *self.strides), kw,
                (split, *self.weight_size))

    def launch_once(self, cfg, dy, x):
        """The kernel alone (the tuner's): the partial sums."""
        grid, scalars, kw, part_size = self.kernel_args(cfg)
        part = torch.empty(part_size, dtype=self.part_dtype, device=self.device)
        jit_launch(_igemm_bwd_weight_kernel, grid, dy, x, part, *scalars, **kw)
        return part

    def prune(self, cfg):
        return (cfg["BLOCK_M"] <= max(16, triton.next_power_of_2(self.kg))
                and cfg["BLOCK_N"] <= max(16, triton.next_power_of_2(self.jred))
                and (self.nchw or not cfg.get("NCHW")))

    def build(self, cfg) -> Plan:
        grid, scalars, kw, part_size = self.kernel_args(cfg)
        fast = Launch(_igemm_bwd_weight_kernel, grid, 3, scalars, kw, self.device)
        return grad_weight_plan(fast, part_size, self.part_dtype, self.weight_size, self.device)


FAMILY = Family("igemm", POLICY, _plan_conv2d, _plan_grad_input, _plan_grad_weight)
conv2d, conv2d_grad_input, conv2d_grad_weight = FAMILY.entries()
