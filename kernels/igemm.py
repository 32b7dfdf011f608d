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
per-element gather path: see NCHW_PIX_MAJOR.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (Launch, PlanCache, TORCH_TO_TL, TileTuner, activation_code,
                      apply_activation, dot_args, dot_precision, interpreting, is_channels_last,
                      launch_meta, mma, needs_int64, new_output, num_sms, plan_key)

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
# (dev/results/igemm_tiles/). NESTED tiles won the 3x3s with Cg >= 128
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
NARROW_N = 64          # tiles narrower than this only where Kg < NARROW_N
SHORT_K_STAGES = 2     # 2-stage tiles only for reductions of <= 2 blocks (e.g. C = 64 1x1)
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


# One tuner per operand width: the two lists differ (BLOCK_K 64 vs 32).
_fwd_tuners = {16: TileTuner("igemm_fwd16", FWD_CONFIGS_16 + NARROW_CONFIGS, INTERPRET_CONFIG),
               32: TileTuner("igemm_fwd32", FWD_CONFIGS_32 + FWD_NCHW_CONFIGS_32 + NARROW_CONFIGS,
                             INTERPRET_CONFIG)}


def _fwd_tuner(dtype):
    return _fwd_tuners[16 if dtype in (torch.float16, torch.bfloat16) else 32]


def _out_hw(h, w, r, s, stride, padding, dilation):
    ho = (h + padding[0] + padding[1] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    wo = (w + padding[2] + padding[3] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return ho, wo


def _check(x, w, name):
    if x.dtype != w.dtype:
        raise TypeError(f"fastconv.{name}: dtypes differ ({x.dtype} vs {w.dtype})")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"fastconv.{name}: unsupported dtype {x.dtype}")
    if x.dim() != 4 or w.dim() != 4:
        raise ValueError(f"fastconv.{name}: expected 4-D tensors, got {tuple(x.shape)} and "
                         f"{tuple(w.shape)}")


def _pick(tuner, key, t, launch, prune):
    if t.dtype == torch.float64 and t.device.type == "cuda":
        return FP64_CONFIG
    return tuner.pick(key, t.device, launch, prune)


def _meta(cfg):
    """launch_meta, less NCHW (a tile-list marker, not a kernel parameter)."""
    meta, opts = launch_meta(cfg)
    meta.pop("NCHW", None)
    return meta, opts


def _layout_key(t):
    return "cl" if is_channels_last(t) else "nchw"


# NCHW fp32 plans (other dtypes keep the channel-order tiles: not measured). Three choices,
# per direction and layer kind, made when a plan is made and measured on an H200 (TF32,
# ResNet-50 at batch 32: dev/results/igemm_nchw/).
# TF32 tensor cores read both operands K-major (the reduction index contiguous); NCHW
# activations are pixel-contiguous, so the forward's and grad_input's activation tiles
# need a transpose somewhere, and so do NCHW weights. Layer kinds: "1x1", "kxk", and
# "gather" (Cg not a multiple of 16: the per-element kk decomposition, e.g. the RGB stem).
# Per-layer times of every choice: round1.log, round2.log there (us, same-run cuDNN).
# PIX_MAJOR tiles (module doc): only the stem's forward gains (168 vs 339 us); elsewhere
# Triton's transposed TF32 operand staging costs more than the scattered loads it saves
# (e.g. 3x3 256@14 forward 226 vs 154 us, grad_input 396 vs 316).
NCHW_PIX_MAJOR = {"fwd": frozenset({"gather"}), "grad_input": frozenset(),
                  "grad_weight": frozenset()}
# Copy the weight per call into the order in which the GEMM's reduction index is
# contiguous: the forward reduces over c (channels_last weight), grad_input over k (k
# innermost). NCHW 3x3 weights have neither contiguous (c is R*S apart), nor has a 1x1
# weight k: forward 3x3 65-112 vs 117-220 us, grad_input 32-289 vs 64-1223 us.
NCHW_WEIGHT_COPY = {"fwd": frozenset({"kxk", "gather"}), "grad_input": frozenset({"1x1", "kxk"})}
# fp32 convs that run through the channels_last kernels on transposed copies (x/dy and the
# weight in, the result back to NCHW), where the output plane (Ho*Wo) is at most
# NCHW_VIA_CL_MAX_PLANE: there the copies are cheap and the channels_last tiles fast (3x3
# grad_input at 14x14 and 7x7: 70-198 vs 75-289 us; forward at 7x7: 76-95 vs 99-112 us).
# On larger planes and on 1x1 layers the copies cost more than they save.
NCHW_VIA_CHANNELS_LAST = {"fwd": frozenset({"kxk"}), "grad_input": frozenset({"kxk"}),
                          "grad_weight": frozenset()}
NCHW_VIA_CL_MAX_PLANE = {"fwd": 7 * 7, "grad_input": 14 * 14, "grad_weight": 0}
# The forward's "gather" choices were timed on ResNet-50's 7x7 stem only. Applied to
# MobileNetV2/EfficientNet-B0 (3x3 stems, 1x1 layers with 24/40 channels) the whole TF32
# forward went from 2.50 to 2.79 ms and 3.45 to 3.90 ms (CUDA graphs, H200): below this
# many taps they keep the channel-order tiles.
GATHER_MIN_TAPS = 49


def _nchw(*tensors):
    """Every tensor has adjacent pixels along W and non-adjacent channels (NCHW-like)."""
    return all(t.stride(3) == 1 and t.stride(1) != 1 for t in tensors)


def _kind(r, s, cg):
    if cg % 16:
        return "gather"
    return "1x1" if r == 1 and s == 1 else "kxk"


def _nchw_tag(pm, w_copy=False):
    """Tuner-key suffix: plans whose kernels differ by these choices are tuned apart."""
    return ("|pm" if pm else "") + ("|wcopy" if w_copy else "")


def _via_cl(direction, act, r, s, cg, plane):
    """act: the activation-like operand (x or dy); plane: the forward's Ho*Wo."""
    return (_kind(r, s, cg) in NCHW_VIA_CHANNELS_LAST[direction]
            and plane <= NCHW_VIA_CL_MAX_PLANE[direction]
            and act.dtype == torch.float32 and _nchw(act))


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def _c_major(w):
    return w.contiguous(memory_format=torch.channels_last)


def _k_major(w):
    return w.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)


def _tune_key(n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups, dtype, a, b, tag):
    return (f"{n}x{c}x{h}x{wd}|{k}x{cg}x{r}x{s}|{tuple(stride)}{tuple(padding)}{tuple(dilation)}"
            f"g{groups}|{dtype}|{_layout_key(a)}{_layout_key(b)}|{dot_precision(dtype)}" + tag)


def _k_prune(kred, kg):
    """Tiles no wider than the problem (BLOCK_N <= pow2(Kg), BLOCK_K <= pow2(K))."""
    def prune(cfg):
        if cfg["BLOCK_N"] > max(16, triton.next_power_of_2(kg)):
            return False
        if cfg["BLOCK_K"] > max(16, triton.next_power_of_2(kred)):
            return False
        return True
    return prune


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


_fwd_plans = PlanCache()


def conv2d(x, w, bias, stride, padding, dilation, groups, activation="none"):
    key = plan_key(x, w, bias, stride, padding, dilation, groups, activation)
    plan = _fwd_plans.get(key)
    if plan is None:
        plan = _fwd_plans[key] = _plan_conv2d(x, w, bias, stride, padding, dilation, groups,
                                              activation)
    return plan(x, w, bias)


def _plan_conv2d(x, w, bias, stride, padding, dilation, groups, activation):
    """Checks, tile choice and launch constants for one geometry; returns run(x, w, bias)."""
    _check(x, w, "triton_igemm_conv2d")
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    if c != cg * groups or k % groups:
        raise ValueError(f"fastconv.triton_igemm_conv2d: input {tuple(x.shape)} and weight "
                         f"{tuple(w.shape)} do not match groups={groups}")
    kg = k // groups
    ho, wo = _out_hw(h, wd, r, s, stride, padding, dilation)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"fastconv.triton_igemm_conv2d: empty output {ho}x{wo}")
    if _via_cl("fwd", x, r, s, cg, ho * wo) and not is_channels_last(w):
        inner = _plan_conv2d(_cl(x), _cl(w), bias, stride, padding, dilation, groups, activation)
        return lambda x, w, bias: inner(_cl(x), _cl(w), bias).contiguous()
    cl = is_channels_last(x) or is_channels_last(w)
    y = new_output((n, k, ho, wo), x, cl)
    m = n * ho * wo
    if m == 0:
        return lambda x, w, bias: new_output((n, k, ho, wo), x, cl)
    plain = (r == 1 and s == 1 and tuple(stride) == (1, 1) and tuple(padding) == (0, 0, 0, 0)
             and x.stride(2) == wd * x.stride(3) and y.stride(2) == wo * y.stride(3))
    act = activation_code(activation)
    i64 = needs_int64(x, w, y)
    tma = plain and _tma_gemm_ok(x, w, groups, i64)
    y_tma = tma and _tma_store_ok(y)
    dots = dot_args(x.dtype)
    nchw = x.dtype == torch.float32 and _nchw(x, y)
    kind = _kind(r, s, cg)
    if kind == "gather" and r * s < GATHER_MIN_TAPS:
        kind = None  # not timed: the channel-order tiles as before
    pm = nchw and kind in NCHW_PIX_MAJOR["fwd"]
    w_copy = nchw and kind in NCHW_WEIGHT_COPY["fwd"] and w.stride(1) != 1
    if w_copy:
        w = _c_major(w)
    geometry = (h, wd, ho, wo, m, cg, kg, *x.stride(), *w.stride(), *y.stride(),
                stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])
    kred = cg * r * s

    def kernel_args(cfg, has_bias):
        meta, opts = _meta(cfg)
        nested = meta.pop("NESTED", False)
        grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(kg, meta["BLOCK_N"]), groups)
        blocked = cg % meta["BLOCK_K"] == 0
        return grid, dict(R=r, S=s, HAS_BIAS=has_bias, ACT=act, CHANNEL_BLOCKED=blocked,
                          PLAIN_GEMM=plain and blocked, NESTED=nested,
                          PIX_MAJOR=pm,
                          NEED_I64=i64, GROUP=GROUP_M, **dots, **meta, **opts)

    def tma_args(cfg, has_bias, store_tma):
        meta, opts = _meta(cfg)
        meta.pop("NESTED", None)
        grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(kg, meta["BLOCK_N"]), groups)
        scalars = (ho * wo, m, c, k, y.stride(0), y.stride(1), y.stride(3))
        return grid, scalars, dict(Y_TMA=store_tma, OUT_DTYPE=TORCH_TO_TL[y.dtype],
                                   HAS_BIAS=has_bias, ACT=act, GROUP=GROUP_M, **dots, **meta,
                                   **opts)

    def descriptors(cfg, x, w, y, store_tma):
        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        return (TensorDescriptor(x, [m, c], [c, 1], [bm, bk]),
                TensorDescriptor(w, [k, c], [c, 1], [bn, bk]),
                TensorDescriptor(y, [m, k], [k, 1], [bm, bn]) if store_tma else y)

    def launch(cfg, x, w, b, y):
        # A call whose tensors start off the 16-byte grid (a view) cannot use TMA: it runs
        # the same tile through pointers.
        if cfg.get("KIND") == "tma" and tma and _aligned(x, w):
            store_tma = y_tma and _aligned(y)
            grid, scalars, kw = tma_args(cfg, b is not None, store_tma)
            a_desc, b_desc, y_arg = descriptors(cfg, x, w, y, store_tma)
            _igemm_fwd_tma_kernel[grid](a_desc, b_desc, w if b is None else b, y_arg,
                                        *scalars, **kw)
            return
        grid, kw = kernel_args(cfg, b is not None)
        _igemm_fwd_kernel[grid](x, w, w if b is None else b, y, *geometry, **kw)

    key = _tune_key(n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups, x.dtype, x, w,
                    _nchw_tag(pm, w_copy))
    b0 = None if bias is None else bias.contiguous()
    k_fits = _k_prune(kred, kg)
    tma_now = tma and _aligned(x, w)
    blocks = lambda cfg: triton.cdiv(kred, cfg["BLOCK_K"])  # noqa: E731

    def prune(cfg):
        if not k_fits(cfg) or (cfg.get("KIND") == "tma" and not tma_now):
            return False
        if cfg.get("NCHW") and not nchw:
            return False
        if cfg["BLOCK_N"] < NARROW_N <= kg:
            return False
        if cfg["num_stages"] <= SHORT_K_STAGES and blocks(cfg) > SHORT_K_STAGES:
            return False
        # NESTED only changes the loop of channel-blocked convs with taps or strides
        return not cfg.get("NESTED") or (cg % cfg["BLOCK_K"] == 0 and not plain)
    cfg = _pick(_fwd_tuner(x.dtype), key, x, lambda cfg: launch(cfg, x, w, b0, y), prune)

    grid, kw = kernel_args(cfg, bias is not None)
    fast = Launch(_igemm_fwd_kernel, grid, 4, geometry, kw, x.device)

    if cfg.get("KIND") == "tma" and tma:
        # Descriptors wrap each call's tensors (~1 us each); a call whose tensors start off
        # the 16-byte grid (a view) runs the same tile through pointers.
        tma_grid, scalars, tma_kw = tma_args(cfg, bias is not None, y_tma)
        fast_tma = Launch(_igemm_fwd_tma_kernel, tma_grid, 4, scalars, tma_kw, x.device)

        def run(x, w, bias):
            y = new_output((n, k, ho, wo), x, cl)
            b = w if bias is None else bias.contiguous()
            if _aligned(x, w, y):
                a_desc, b_desc, y_arg = descriptors(cfg, x, w, y, y_tma)
                fast_tma(a_desc, b_desc, b, y_arg)
            else:
                fast(x, w, b, y)
            return y
        return run

    def run(x, w, bias):
        y = new_output((n, k, ho, wo), x, cl)
        if w_copy:
            w = _c_major(w)
        fast(x, w, w if bias is None else bias.contiguous(), y)
        return y
    return run


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


_bwd_input_tuner = TileTuner("igemm_bwd_input", BWD_INPUT_CONFIGS, INTERPRET_CONFIG)
# grad_input loop choice, measured on an H200 (bf16, batch 32): the flat loop won at Kg=64
# (3x3@56: 31 vs 37 us) and lost at Kg >= 256 (1x1 1024->256@14: 20 vs 12 us).
GRAD_INPUT_FLAT_BLOCKS = 2


_bwd_input_plans = PlanCache()


def conv2d_grad_input(dy, w, input_size, stride, padding, dilation, groups):
    key = plan_key(dy, w, None, stride, padding, dilation, groups, tuple(input_size))
    plan = _bwd_input_plans.get(key)
    if plan is None:
        plan = _bwd_input_plans[key] = _plan_grad_input(dy, w, input_size, stride, padding,
                                                        dilation, groups)
    return plan(dy, w)


def _plan_grad_input(dy, w, input_size, stride, padding, dilation, groups):
    _check(dy, w, "triton_igemm_conv2d_grad_input")
    n, c, h, wd = input_size
    k, cg, r, s = w.shape
    kg = k // groups
    ho, wo = dy.shape[2], dy.shape[3]
    if (ho, wo) != _out_hw(h, wd, r, s, stride, padding, dilation) or dy.shape[1] != k:
        raise ValueError(f"fastconv.triton_igemm_conv2d_grad_input: grad_output {tuple(dy.shape)} "
                         f"does not match input_size {tuple(input_size)} and weight {tuple(w.shape)}")
    if _via_cl("grad_input", dy, r, s, cg, ho * wo):
        # the weight k-innermost (as the tensor cores read it) where the copy is on
        w_as = _k_major if _kind(r, s, cg) in NCHW_WEIGHT_COPY["grad_input"] else _cl
        inner = _plan_grad_input(_cl(dy), w_as(w), input_size, stride, padding, dilation, groups)
        return lambda dy, w: inner(_cl(dy), w_as(w)).contiguous()
    cl = is_channels_last(dy)
    dx = new_output((n, c, h, wd), dy, cl)
    m = n * h * wd
    if m == 0:
        return lambda dy, w: new_output((n, c, h, wd), dy, cl)
    i64 = needs_int64(dy, w, dx)
    dots = dot_args(dy.dtype)
    nchw = dy.dtype == torch.float32 and _nchw(dy, dx)
    kind = _kind(r, s, cg)
    pm = nchw and kind in NCHW_PIX_MAJOR["grad_input"]
    # channels_last fp32 too: a channels_last weight has c, not k, innermost (H200, TF32,
    # the channels_last kernel alone on ResNet-50 layers: 19-176 vs 57-470 us)
    w_copy = ((nchw or (cl and dy.dtype == torch.float32))
              and kind in NCHW_WEIGHT_COPY["grad_input"] and w.stride(0) != 1)
    if w_copy:
        w = _k_major(w)
    geometry = (h, wd, ho, wo, m, cg, kg, *dy.stride(), *w.stride(), *dx.stride(),
                stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])

    def kernel_args(cfg):
        meta, opts = _meta(cfg)
        grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(cg, meta["BLOCK_N"]), groups)
        blocked = kg % meta["BLOCK_K"] == 0
        return grid, dict(R=r, S=s, CHANNEL_BLOCKED=blocked,
                          FLAT=kg <= GRAD_INPUT_FLAT_BLOCKS * meta["BLOCK_K"],
                          PIX_MAJOR=pm,
                          NEED_I64=i64, **dots, **meta, **opts)

    def launch(cfg, dy, w, dx):
        grid, kw = kernel_args(cfg)
        _igemm_bwd_input_kernel[grid](dy, w, dx, *geometry, **kw)

    key = _tune_key(n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups, dy.dtype, dy, w,
                    _nchw_tag(pm, w_copy))
    k_fits = _k_prune(kg * r * s, cg)
    # narrow tiles (grouped convs' few channels) only where the output is narrow
    prune = lambda cfg: (k_fits(cfg) and not cfg["BLOCK_N"] < NARROW_N <= cg  # noqa: E731
                         and (nchw or not cfg.get("NCHW")))
    cfg = _pick(_bwd_input_tuner, key, dy, lambda cfg: launch(cfg, dy, w, dx), prune)

    grid, kw = kernel_args(cfg)
    fast = Launch(_igemm_bwd_input_kernel, grid, 3, geometry, kw, dy.device)

    def run(dy, w):
        dx = new_output((n, c, h, wd), dy, cl)
        fast(dy, _k_major(w) if w_copy else w, dx)
        return dx
    return run


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
    hw_o = Ho * Wo
    for qb in range(q_lo, q_hi, BLOCK_K):
        q = qb + tl.arange(0, BLOCK_K)
        q_ok = q < q_hi
        n = q // hw_o
        pq = q % hw_o
        oh = pq // Wo
        ow = pq % Wo
        if NEED_I64:
            n = n.to(tl.int64)
            oh = oh.to(tl.int64)
            ow = ow.to(tl.int64)
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


_bwd_weight_tuner = TileTuner("igemm_bwd_weight", BWD_WEIGHT_CONFIGS, WGRAD_INTERPRET_CONFIG)
# Tap-blocked grad_weight tiles where Cg % BLOCK_N == 0: per-pixel instead of per-element
# index math for x's tile. H200, TF32, NCHW ResNet-50 layers: 77-262 vs 108-303 us; on
# channels_last copies 86-232 vs 89-241 us. (The switch lets a benchmark time the gather.)
# fp32 only: 16-bit grad_weight was not timed with it.
GRAD_WEIGHT_TAP_BLOCKED = True
SM_TARGET_PROGRAMS = 2  # programs per SM the split aims at


_bwd_weight_plans = PlanCache()


def conv2d_grad_weight(dy, x, weight_size, stride, padding, dilation, groups):
    key = plan_key(dy, x, None, stride, padding, dilation, groups, tuple(weight_size))
    plan = _bwd_weight_plans.get(key)
    if plan is None:
        plan = _bwd_weight_plans[key] = _plan_grad_weight(dy, x, weight_size, stride, padding,
                                                          dilation, groups)
    return plan(dy, x)


def _plan_grad_weight(dy, x, weight_size, stride, padding, dilation, groups):
    _check(dy, x, "triton_igemm_conv2d_grad_weight")
    k, cg, r, s = weight_size
    n, c, h, wd = x.shape
    kg = k // groups
    ho, wo = dy.shape[2], dy.shape[3]
    if (ho, wo) != _out_hw(h, wd, r, s, stride, padding, dilation) or dy.shape[1] != k:
        raise ValueError(f"fastconv.triton_igemm_conv2d_grad_weight: grad_output "
                         f"{tuple(dy.shape)} does not match input {tuple(x.shape)} and "
                         f"weight_size {tuple(weight_size)}")
    if _via_cl("grad_weight", x, r, s, cg, ho * wo) and _nchw(dy):
        inner = _plan_grad_weight(_cl(dy), _cl(x), weight_size, stride, padding, dilation, groups)
        return lambda dy, x: inner(_cl(dy), _cl(x))
    q = n * ho * wo
    if q == 0:
        return lambda dy, x: torch.zeros(tuple(weight_size), dtype=x.dtype, device=x.device)
    jred = cg * r * s
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    i64 = needs_int64(dy, x)
    sms = num_sms(x.device, 4)
    dots = dot_args(x.dtype)
    nchw = x.dtype == torch.float32 and _nchw(x)
    pm = nchw and _kind(r, s, cg) in NCHW_PIX_MAJOR["grad_weight"]
    tb_on = GRAD_WEIGHT_TAP_BLOCKED and x.dtype == torch.float32
    geometry = (h, wd, ho, wo, q, cg, kg)
    strides = (*dy.stride(), *x.stride(),
               stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])

    def plan(meta):
        tiles = triton.cdiv(kg, meta["BLOCK_M"]) * triton.cdiv(jred, meta["BLOCK_N"]) * groups
        want = max(1, (SM_TARGET_PROGRAMS * sms) // tiles)
        split = max(1, min(want, triton.cdiv(q, 4 * meta["BLOCK_K"])))
        chunk = triton.cdiv(triton.cdiv(q, split), meta["BLOCK_K"]) * meta["BLOCK_K"]
        return triton.cdiv(q, chunk), chunk

    def kernel_args(cfg):
        meta, opts = _meta(cfg)
        split, chunk = plan(meta)
        grid = (triton.cdiv(kg, meta["BLOCK_M"]) * triton.cdiv(jred, meta["BLOCK_N"]), groups, split)
        tap_blocked = tb_on and cg % meta["BLOCK_N"] == 0
        return split, grid, (*geometry, chunk, *strides), dict(
            R=r, S=s, TAP_BLOCKED=tap_blocked,
            PIX_MAJOR=pm, NEED_I64=i64, **dots,
            **meta, **opts)

    def launch(cfg, dy, x):
        split, grid, scalars, kw = kernel_args(cfg)
        part = torch.empty((split, k, cg, r, s), dtype=acc_dtype, device=x.device)
        _igemm_bwd_weight_kernel[grid](dy, x, part, *scalars, **kw)
        return part

    key = _tune_key(n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups, x.dtype, dy, x,
                    _nchw_tag(pm) + ("|tb" if tb_on else ""))
    prune = lambda cfg: (cfg["BLOCK_M"] <= max(16, triton.next_power_of_2(kg))  # noqa: E731
                         and cfg["BLOCK_N"] <= max(16, triton.next_power_of_2(jred))
                         and (nchw or not cfg.get("NCHW")))
    cfg = _pick(_bwd_weight_tuner, key, x, lambda cfg: launch(cfg, dy, x), prune)

    split, grid, scalars, kw = kernel_args(cfg)
    part_size = (split, k, cg, r, s)
    fast = Launch(_igemm_bwd_weight_kernel, grid, 3, scalars, kw, x.device)

    def run(dy, x):
        part = torch.empty(part_size, dtype=acc_dtype, device=x.device)
        fast(dy, x, part)
        # Fixed-order sum over the split: the same bits on every run.
        dw = new_output(tuple(weight_size), x, False)
        if part.dtype == dw.dtype:
            torch.sum(part, dim=0, out=dw)
        else:
            dw.copy_(part.sum(0))
        return dw
    return run
