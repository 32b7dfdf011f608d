"""Grouped convolution with few channels per group (algo="triton_grouped"): ResNeXt's
g=32 3x3 layers (4..32 channels per group) and the like. Forward, grad_input, grad_weight.

Why a family of its own: as an implicit GEMM a grouped conv is `groups` tiny GEMMs
(N = Kg, K = Cg per tap), narrower than tl.dot's 16-wide minimum, so `triton_igemm`
wastes most of each tile and falls back to its slow flattened k-decomposition. These
layers are memory-bound (ResNeXt 128@56^2 bf16: >= 51 MB in+out, 12 us at 4.2 TB/s, vs
0.92 GFLOP = 1.5 us of tensor-core time), so we can afford to waste FLOPs, not bytes.

Block-diagonal tensor-core tile (KIND "bd"): one program = BLOCK_M pixels x GPT groups.
Per tap it loads ONE contiguous A tile [BLOCK_M, GPT*Cg] (a group's channels sit next to
its neighbours' in NHWC) and a block-diagonal B [GPT*Cg, GPT*Kg] (the weight, loaded
masked: zeros off the diagonal blocks), and issues one tl.dot. GPT is the smallest power
of two that makes the dot >= 16 wide (racing 2x that); it multiplies the FLOPs by GPT.

Variants of that tile: "bdp" loops over the taps instead of unrolling them, so Triton
software-pipelines the A loads (cp.async); "bdk" gathers the first 2^k taps into one
[BLOCK_M, 2^k*GPT*Cg] im2col tile and issues one long-K dot.

Direct CUDA-core tile (KIND "direct"): the same tile, but per tap a broadcast
multiply-sum acc[m, g, k] += sum_c x[m, g, c] * w[g, c, k] in fp32 (fp64 for fp64):
no FLOP waste, no tensor cores. fp64 always takes it (Triton has no fp64 dot everywhere).
On the H200 it was 3.5-4.5x slower than "bd", so the tuner no longer races it.

grad_input is the transposed grouped conv: the same kernel with the roles of input and
output channels swapped and the tap geometry inverted (TRANSPOSED); with a stride, one
program per stride phase (PHASED), which visits only the taps that reach its pixels.
grad_weight per group is the [Kg, Cg] product dY^T X_tap per tap, reduced over pixels:
the same block-diagonal trick gives one [GPT*Kg, GPT*Cg] dot of which the diagonal blocks
are kept, one program per tap ("tap") or all taps as one [BLOCK_Q, taps*GPT*Cg] gathered
tile ("taps": dy and x stream through once); the pixel reduction is split across programs
into an fp32 buffer summed in a fixed order (deterministic, no atomics).

Measured results and which tile won where: dev/triton/results/grouped_tiles/README.md.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from . import GROUPED_MAX_GROUP_WIDTH
from ._common import (Launch, activation_code, apply_activation, dot_args, dot_precision,
                      is_channels_last, jit_launch, mma, new_output, num_sms,
                      pixel_coords)
from ._plan import (Family, Plan, Policy, Prefer, Tiles, check_grad_output, check_groups,
                    check_operands, check_output, empty_plan, features, grad_weight_plan,
                    launch_meta, out_hw, output_steps, split_reduction, tune, tune_key)

MIN_DOT = 16        # tl.dot's minimum M/N/K
MAX_GROUP_WIDTH = GROUPED_MAX_GROUP_WIDTH  # Cg, Kg above: a dense-ish GEMM per group
MAX_UNROLL = tl.constexpr(25)  # taps unrolled up to 5x5; larger kernels loop


def reference_conv2d(x, w, bias, stride, padding, dilation, groups, gpt=None):
    """The loop nest the "bd" kernel runs: per chunk of `gpt` groups and per tap, one GEMM
    of the strided input patch [M, gpt*Cg] with a block-diagonal [gpt*Cg, gpt*Kg] weight."""
    n, c, h, wd = x.shape
    k, cg, r_, s_ = w.shape
    kg = k // groups
    gpt = gpt or _min_gpt(cg, kg)
    xp = torch.nn.functional.pad(x, (padding[2], padding[3], padding[0], padding[1]))
    ho = (h + padding[0] + padding[1] - dilation[0] * (r_ - 1) - 1) // stride[0] + 1
    wo = (wd + padding[2] + padding[3] - dilation[1] * (s_ - 1) - 1) // stride[1] + 1
    y = x.new_zeros(n, k, ho, wo)
    for g0 in range(0, groups, gpt):
        g1 = min(g0 + gpt, groups)
        for r in range(r_):
            for s in range(s_):
                bd = torch.block_diag(*[w[g * kg:(g + 1) * kg, :, r, s].t()
                                        for g in range(g0, g1)])
                h0, w0 = r * dilation[0], s * dilation[1]
                patch = xp[:, g0 * cg:g1 * cg, h0:h0 + stride[0] * (ho - 1) + 1:stride[0],
                           w0:w0 + stride[1] * (wo - 1) + 1:stride[1]]
                y[:, g0 * kg:g1 * kg] += torch.einsum("nchw,ck->nkhw", patch, bd)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y


# --------------------------------------------------------------------------------------
# Forward and grad_input: one kernel.
#   forward:    src = x  [N, G*CI, Hs, Ws], dst = y  [N, G*CO, Hd, Wd], CI = Cg, CO = Kg
#               src pixel = dst * stride - pad + tap * dilation
#   transposed: src = dy [N, G*CI, Hs, Ws], dst = dx [N, G*CO, Hd, Wd], CI = Kg, CO = Cg
#               src pixel = (dst + pad - tap * dilation) / stride, where that divides
#   weight element for (group g, ci, co, r, s) at  g*SWG + ci*SW_CI + co*SW_CO + r*swr + s*sws
# --------------------------------------------------------------------------------------
@triton.jit
def _tap(acc, r, s, src_row, a_col, a_ok, dh, dw, m_ok, w_ptr, w_off, w_ok,
         Hs, Ws, ssh, ssw, swr, sws, SH, SW, PT, PL, DH, DW, R: tl.constexpr,
         S: tl.constexpr, TRANSPOSED: tl.constexpr, PHASED: tl.constexpr,
         DENSE: tl.constexpr, DIRECT: tl.constexpr,
         W_UNMASKED: tl.constexpr, GPT: tl.constexpr, CI_P: tl.constexpr,
         BLOCK_M: tl.constexpr, USE_DOT: tl.constexpr,
         IS_FP32: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
         ACC_DTYPE: tl.constexpr):
    """One tap (r, s): gather the source tile [BLOCK_M, GPT*CI] and accumulate."""
    if PHASED:
        # Every pixel of this program's stride phase takes tap (r, s) (when it exists):
        # the divisions are exact.
        sh = (dh + PT - r) // SH
        sw = (dw + PL - s) // SW
        # (the tap test as a block: the interpreter mis-types scalar & block masks)
        sp_ok = (m_ok & (sh >= 0) & (sh < Hs) & (sw >= 0) & (sw < Ws)
                 & (dh * 0 + r < R) & (dw * 0 + s < S))
        r = tl.minimum(r, R - 1)  # a missing tap reads a real weight and adds zeros
        s = tl.minimum(s, S - 1)
    elif TRANSPOSED:
        th = dh + PT - r * DH
        tw = dw + PL - s * DW
        sh = th // SH
        sw = tw // SW
        sp_ok = (m_ok & (th >= 0) & (tw >= 0) & (th % SH == 0) & (tw % SW == 0)
                 & (sh < Hs) & (sw < Ws))
    else:
        sh = dh * SH - PT + r * DH
        sw = dw * SW - PL + s * DW
        sp_ok = m_ok & (sh >= 0) & (sh < Hs) & (sw >= 0) & (sw < Ws)
    a_ptr = (src_row + sh * ssh + sw * ssw)[:, None] + a_col[None, :]
    if DENSE:
        a = tl.load(a_ptr, mask=sp_ok[:, None], other=0.0)
    else:
        a = tl.load(a_ptr, mask=sp_ok[:, None] & a_ok[None, :], other=0.0)
    if W_UNMASKED:
        wt = tl.load(w_ptr + w_off + r * swr + s * sws)
    else:
        wt = tl.load(w_ptr + w_off + r * swr + s * sws, mask=w_ok, other=0.0)
    if DIRECT:
        # acc [BLOCK_M, GPT, CO_P] += sum_ci a[m, g, ci] * w[g, ci, co]
        a3 = tl.reshape(a, (BLOCK_M, GPT, CI_P))
        acc += tl.sum(a3.to(ACC_DTYPE)[:, :, :, None] * wt.to(ACC_DTYPE)[None, :, :, :], axis=2)
    else:
        acc = mma(a, wt, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    return acc


@triton.jit
def _grouped_kernel(
    src_ptr, w_ptr, b_ptr, dst_ptr,
    Hs, Ws, Hd, Wd, M, G,
    ssn, ssc, ssh, ssw, SWG, SW_CI, SW_CO, swr, sws, sdn, sdc, sdh, sdw,
    SH, SW, PT, PL, DH, DW,
    CI: tl.constexpr, CO: tl.constexpr, CI_P: tl.constexpr, CO_P: tl.constexpr,
    R: tl.constexpr, S: tl.constexpr, TRANSPOSED: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr, IS_FP32: tl.constexpr, UPCAST: tl.constexpr,
    NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr,
    EVEN_G: tl.constexpr, DIRECT: tl.constexpr, GPT: tl.constexpr, BLOCK_M: tl.constexpr,
    PHASED: tl.constexpr = False, TR: tl.constexpr = 1, TS: tl.constexpr = 1,
    TB: tl.constexpr = 0, PIPE: tl.constexpr = False,
):
    # Whole, unpadded channel chunks: the channel offsets are a plain arange (vector loads).
    DENSE: tl.constexpr = (CI == CI_P) and (CO == CO_P) and EVEN_G
    # One whole group per program: the weight tile needs no mask, so its load can vectorize.
    W_UNMASKED: tl.constexpr = DENSE and (GPT == 1) and (not DIRECT)
    pid = tl.program_id(0)
    n_gc = tl.cdiv(G, GPT)
    # Group chunks vary fastest: programs running together cover the same pixels, so each
    # input row is fetched from DRAM once and shared through L2.
    gc = pid % n_gc
    pm = pid // n_gc
    g0 = gc * GPT

    offs_m = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    if PHASED:
        # grad_input with stride > 1 (dilation 1), one stride phase per program: the
        # destination pixels with (dh + PT) % SH == ph_h and (dw + PL) % SW == ph_w, which
        # take exactly the taps r = ph_h + SH*i, s = ph_w + SW*j. M = N * Hq * Wq.
        ph = tl.program_id(1)
        ph_h = ph // SW
        ph_w = ph % SW
        dh0 = ((ph_h - PT) % SH + SH) % SH
        dw0 = ((ph_w - PL) % SW + SW) % SW
        hq = tl.cdiv(Hd, SH)
        wq = tl.cdiv(Wd, SW)
        n = offs_m // (hq * wq)
        p = offs_m % (hq * wq)
        dh = dh0 + SH * (p // wq)
        dw = dw0 + SW * (p % wq)
        m_ok = (offs_m < M) & (dh < Hd) & (dw < Wd)
    else:
        m_ok = offs_m < M
        hw = Hd * Wd
        n = offs_m // hw
        p = offs_m % hw
        dh = p // Wd
        dw = p % Wd
    if NEED_I64:
        n = n.to(tl.int64)
        dh = dh.to(tl.int64)
        dw = dw.to(tl.int64)
        g0 = g0.to(tl.int64)

    # Source channels (gl, ci) and destination channels (gl, co) of this chunk.
    ka = tl.arange(0, GPT * CI_P)
    a_gl = ka // CI_P
    a_ci = ka % CI_P
    a_ok = (a_ci < CI) & (g0 + a_gl < G)
    nb = tl.arange(0, GPT * CO_P)
    b_gl = nb // CO_P
    b_co = nb % CO_P
    o_ok = (b_co < CO) & (g0 + b_gl < G)
    if DENSE:
        a_chan = g0 * CI + ka
        o_chan = g0 * CO + nb
    else:
        a_chan = (g0 + a_gl) * CI + a_ci
        o_chan = (g0 + b_gl) * CO + b_co
    src_row = src_ptr + n * ssn
    a_col = a_chan * ssc

    if DIRECT:
        # [GPT, CI_P, CO_P] weight slab per tap, no zeros; acc [BLOCK_M, GPT, CO_P].
        wg = tl.arange(0, GPT)
        wi = tl.arange(0, CI_P)
        wo = tl.arange(0, CO_P)
        w_off = ((g0 + wg) * SWG)[:, None, None] + (wi * SW_CI)[None, :, None] \
            + (wo * SW_CO)[None, None, :]
        w_ok = ((g0 + wg) < G)[:, None, None] & (wi < CI)[None, :, None] \
            & (wo < CO)[None, None, :]
        acc = tl.zeros((BLOCK_M, GPT, CO_P), dtype=ACC_DTYPE)
    else:
        # Block-diagonal B [GPT*CI_P, GPT*CO_P]: zeros where the two groups differ.
        w_off = (g0 * SWG + a_gl * SWG + a_ci * SW_CI)[:, None] + (b_co * SW_CO)[None, :]
        w_ok = (a_gl[:, None] == b_gl[None, :]) & a_ok[:, None] & o_ok[None, :]
        acc = tl.zeros((BLOCK_M, GPT * CO_P), dtype=ACC_DTYPE)

    if TB > 0:
        # Forward "bdk": the first TB taps (a power of two) as ONE dot with K = TB*GPT*CI:
        # A = the [BLOCK_M, TB, GPT*CI] im2col tile (one gather), B = TB block-diagonal
        # weights stacked. One operand staging and one MMA chain instead of TB small ones.
        tb = tl.arange(0, TB)
        tr = tb // S
        ts = tb % S
        sh = (dh * SH - PT)[:, None] + (tr * DH)[None, :]
        sw = (dw * SW - PL)[:, None] + (ts * DW)[None, :]
        ok = m_ok[:, None] & (sh >= 0) & (sh < Hs) & (sw >= 0) & (sw < Ws)
        ptr3 = (src_row[:, None] + sh * ssh + sw * ssw)[:, :, None] + a_col[None, None, :]
        if DENSE:
            a3 = tl.load(ptr3, mask=ok[:, :, None], other=0.0)
        else:
            a3 = tl.load(ptr3, mask=ok[:, :, None] & a_ok[None, None, :], other=0.0)
        w3_ptr = w_ptr + (tr * swr + ts * sws)[:, None, None] + w_off[None, :, :]
        if W_UNMASKED:
            w3 = tl.load(w3_ptr)
        else:
            w3 = tl.load(w3_ptr, mask=w_ok[None, :, :], other=0.0)
        acc = mma(tl.reshape(a3, (BLOCK_M, TB * GPT * CI_P)),
                  tl.reshape(w3, (TB * GPT * CI_P, GPT * CO_P)), acc, USE_DOT, IS_FP32, PREC,
                  UPCAST, ACC_DTYPE)
        for rs in tl.static_range(TB, R * S):
            acc = _tap(acc, rs // S, rs % S, src_row, a_col, a_ok, dh, dw, m_ok,
                       w_ptr, w_off, w_ok, Hs, Ws, ssh, ssw, swr, sws, SH, SW, PT, PL, DH, DW,
                       R, S, TRANSPOSED, PHASED, DENSE, DIRECT, W_UNMASKED, GPT, CI_P,
                       BLOCK_M, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    # Small kernels (ResNeXt's 3x3) are unrolled so every tap's loads can issue early.
    elif PHASED:
        for j in tl.static_range(TR * TS):
            r = ph_h + SH * (j // TS)
            s = ph_w + SW * (j % TS)
            acc = _tap(acc, r, s, src_row, a_col, a_ok, dh, dw, m_ok,
                       w_ptr, w_off, w_ok, Hs, Ws, ssh, ssw, swr, sws, SH, SW, PT, PL, DH, DW,
                       R, S, TRANSPOSED, PHASED, DENSE, DIRECT, W_UNMASKED, GPT, CI_P,
                       BLOCK_M, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    elif R * S <= MAX_UNROLL and not PIPE:
        for rs in tl.static_range(R * S):
            acc = _tap(acc, rs // S, rs % S, src_row, a_col, a_ok, dh, dw, m_ok,
                       w_ptr, w_off, w_ok, Hs, Ws, ssh, ssw, swr, sws, SH, SW, PT, PL, DH, DW,
                       R, S, TRANSPOSED, PHASED, DENSE, DIRECT, W_UNMASKED, GPT, CI_P,
                       BLOCK_M, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    else:
        # A loop, not unrolled: Triton software-pipelines it (num_stages tiles in flight
        # through shared memory, cp.async) -- "bdp" tiles, and kernels wider than 5x5.
        for rs in range(R * S):
            acc = _tap(acc, rs // S, rs % S, src_row, a_col, a_ok, dh, dw, m_ok,
                       w_ptr, w_off, w_ok, Hs, Ws, ssh, ssw, swr, sws, SH, SW, PT, PL, DH, DW,
                       R, S, TRANSPOSED, PHASED, DENSE, DIRECT, W_UNMASKED, GPT, CI_P,
                       BLOCK_M, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)

    if DIRECT:
        acc = tl.reshape(acc, (BLOCK_M, GPT * CO_P))
    if HAS_BIAS:
        bias = tl.load(b_ptr + o_chan, mask=o_ok, other=0.0).to(ACC_DTYPE)
        acc += bias[None, :]
    acc = apply_activation(acc, ACT)
    d_off = (n * sdn + dh * sdh + dw * sdw)[:, None] + (o_chan * sdc)[None, :]
    if DENSE:
        d_mask = m_ok[:, None]
    else:
        d_mask = m_ok[:, None] & o_ok[None, :]
    tl.store(dst_ptr + d_off, acc.to(dst_ptr.dtype.element_ty), mask=d_mask)


def _min_gpt(ci, co):
    """Smallest power-of-two group count that makes both dot sides >= MIN_DOT wide."""
    narrow = min(triton.next_power_of_2(ci), triton.next_power_of_2(co))
    return max(1, MIN_DOT // narrow)


# Candidates, raced per shape by the tuner. GPT is given relative to the minimum that fills
# a dot ("GPT_X": 1 = the minimum, 2 = twice it); "direct" tiles take it literally.
# KIND: "bd" block-diagonal, taps unrolled; "bdp" the same with the tap loop software-
# pipelined (cp.async, fewer registers); "bdk" the first 2^k taps as one long-K dot.
# Measured on the H200 (ResNeXt-50 g=32, batch 32, NHWC; dev/triton/grouped_tiles.py, two
# runs): GPT_X=2 x 128 pixels won 5 of 7 bf16 layers (a 32-wide dot beats the 16-wide
# minimum despite twice the FLOPs: per-tap overhead, not FLOPs, bounds these tiles);
# GPT_X=1 x 64 or 128 pixels won the 16- and 32-channel layers in TF32; the 2-warp
# (mma.sync) tile won one layer; "direct" was 3.5-4.5x slower than "bd" (dropped from the
# list, still fp64's path). "bdp" and "bdk" compile for sm_90 and are tested but were not
# timed in those runs: the tuner races them.
FWD_CONFIGS = [
    dict(KIND="bd", GPT_X=2, BLOCK_M=128, num_warps=4, num_stages=2),
    dict(KIND="bd", GPT_X=1, BLOCK_M=64, num_warps=4, num_stages=2),
    dict(KIND="bd", GPT_X=1, BLOCK_M=128, num_warps=4, num_stages=2),
    dict(KIND="bd", GPT_X=1, BLOCK_M=128, num_warps=2, num_stages=2),
    dict(KIND="bdp", GPT_X=2, BLOCK_M=128, num_warps=4, num_stages=3),
    dict(KIND="bdp", GPT_X=1, BLOCK_M=64, num_warps=4, num_stages=4),
    dict(KIND="bdk", GPT_X=1, BLOCK_M=64, num_warps=4, num_stages=2),
]
# grad_input (transposed, and per stride phase when strided): "bd" GPT_X=1 x 128 won every
# measured layer (bf16); no "bdk" (forward only).
BWD_INPUT_CONFIGS = [
    dict(KIND="bd", GPT_X=1, BLOCK_M=128, num_warps=4, num_stages=2),
    dict(KIND="bd", GPT_X=2, BLOCK_M=128, num_warps=4, num_stages=2),
    dict(KIND="bd", GPT_X=1, BLOCK_M=64, num_warps=4, num_stages=2),
    dict(KIND="bdp", GPT_X=2, BLOCK_M=128, num_warps=4, num_stages=3),
]
INTERPRET_CONFIG = dict(KIND="bd", GPT_X=1, BLOCK_M=32)
# fp64: broadcast multiply-sum on the CUDA cores, small tiles, no tuning.
FP64_CONFIG = dict(KIND="direct", GPT=2, BLOCK_M=32, num_warps=4, num_stages=1)
FP64_INTERPRET_CONFIG = dict(KIND="direct", GPT=2, BLOCK_M=32)


def _resolve(cfg, ci, co, groups):
    """Config -> (DIRECT, GPT, BLOCK_M, launch options, KIND)."""
    meta, opts = launch_meta(cfg)
    direct = cfg.get("KIND") == "direct"
    if direct:
        gpt = meta["GPT"]
    else:
        gpt = _min_gpt(ci, co) * meta["GPT_X"]
    # No wider than the layer: a chunk past the last group is pure waste.
    gpt = min(gpt, max(triton.next_power_of_2(groups), 1 if direct else _min_gpt(ci, co)))
    return direct, gpt, meta["BLOCK_M"], opts, cfg.get("KIND")


def _prune(ci, co, groups, dtype):
    # IEEE fp32 dots run on the CUDA cores (FMA): the block-diagonal waste is real work and
    # the unrolled FMA code is huge (GPT_X=2 x 128 pixels at Cg=32: 90 s in ptxas here).
    ieee32 = dtype == torch.float32 and dot_precision(dtype) == "ieee"

    def prune(cfg):
        if dtype == torch.float64:
            return cfg.get("KIND") == "direct"
        if ieee32 and (cfg.get("GPT_X") != 1 or cfg["BLOCK_M"] > 64 or cfg["KIND"] == "bdk"):
            return False
        if cfg.get("KIND") == "direct":
            # acc[m, g, k] plus the [m, g, ci, co] product live in registers: keep it small.
            return (cfg["BLOCK_M"] * cfg["GPT"] * triton.next_power_of_2(ci)
                    * triton.next_power_of_2(co) <= 64 * 8 * 4 * 4
                    and cfg["GPT"] <= triton.next_power_of_2(groups))
        gpt = _min_gpt(ci, co) * cfg["GPT_X"]
        if cfg.get("KIND") == "bdk":
            # the gathered [BLOCK_M, 8 taps, GPT*CI] tile: at most 128 elements a thread
            tile = cfg["BLOCK_M"] * 8 * gpt * triton.next_power_of_2(ci)
            if tile > 128 * 32 * cfg["num_warps"]:
                return False
        # Twice the minimum only while the chunk stays within the layer's groups.
        return cfg["GPT_X"] == 1 or gpt <= triton.next_power_of_2(groups)
    return prune


# --------------------------------------------------------------------------------------
# grad_weight: per tap (r, s) and group g,
#   dW[g*Kg + k, c, r, s] = sum_{q=(n, oh, ow)} dY[n, g*Kg+k, oh, ow] * x[n, g*Cg+c, ih, iw]
# One program = one tap x GPT groups x one chunk of the pixel reduction: a
# [GPT*Kg, BLOCK_Q] x [BLOCK_Q, GPT*Cg] dot per pixel block, of which the GPT diagonal
# [Kg, Cg] blocks are the answer. Chunks go to an fp32 buffer [SPLIT, K, Cg, R, S], summed
# in a fixed order.
# --------------------------------------------------------------------------------------
@triton.jit
def _grouped_wgrad_kernel(
    dy_ptr, x_ptr, part_ptr,
    H, W, Ho, Wo, Q, G, CHUNK,
    syn, syk, syh, syw, sxn, sxc, sxh, sxw,
    SH, SW, PT, PL, DH, DW,
    CG: tl.constexpr, KG: tl.constexpr, CG_P: tl.constexpr, KG_P: tl.constexpr,
    R: tl.constexpr, S: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr,
    IS_FP32: tl.constexpr, UPCAST: tl.constexpr, NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr,
    GPT: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n_gc = tl.cdiv(G, GPT)
    gc = pid % n_gc
    rs = pid // n_gc
    r = rs // S
    s = rs % S
    g0 = gc * GPT
    # Rows (gl, k): output channels; columns (gl, c): input channels.
    ik = tl.arange(0, GPT * KG_P)
    i_gl = ik // KG_P
    i_k = ik % KG_P
    i_ok = (i_k < KG) & (g0 + i_gl < G)
    jc = tl.arange(0, GPT * CG_P)
    j_gl = jc // CG_P
    j_c = jc % CG_P
    j_ok = (j_c < CG) & (g0 + j_gl < G)
    kout = (g0 + i_gl) * KG + i_k
    cin = (g0 + j_gl) * CG + j_c
    if NEED_I64:
        kout = kout.to(tl.int64)
        cin = cin.to(tl.int64)
    acc = tl.zeros((GPT * KG_P, GPT * CG_P), dtype=ACC_DTYPE)
    q_lo = split * CHUNK
    q_hi = tl.minimum(q_lo + CHUNK, Q)
    for qb in range(q_lo, q_hi, BLOCK_Q):
        q = qb + tl.arange(0, BLOCK_Q)
        q_ok = q < q_hi
        n, oh, ow = pixel_coords(q, Ho, Wo, NEED_I64)
        ih = oh * SH - PT + r * DH
        iw = ow * SW - PL + s * DW
        x_ok = q_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(dy_ptr + (kout * syk)[:, None] + (n * syn + oh * syh + ow * syw)[None, :],
                    mask=i_ok[:, None] & q_ok[None, :], other=0.0)
        b = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + (cin * sxc)[None, :],
                    mask=x_ok[:, None] & j_ok[None, :], other=0.0)
        acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    # Keep the diagonal blocks: part[split, kout, c, r, s] (the weight's contiguous order).
    w_off = (kout * (CG * R * S))[:, None] + (j_c * (R * S) + rs)[None, :]
    base = split.to(tl.int64) * (G * KG * CG * R * S)
    keep = (i_gl[:, None] == j_gl[None, :]) & i_ok[:, None] & j_ok[None, :]
    tl.store(part_ptr + base + w_off, acc, mask=keep)


@triton.jit
def _grouped_wgrad_taps_kernel(
    dy_ptr, x_ptr, part_ptr,
    H, W, Ho, Wo, Q, G, CHUNK,
    syn, syk, syh, syw, sxn, sxc, sxh, sxw,
    SH, SW, PT, PL, DH, DW,
    CG: tl.constexpr, KG: tl.constexpr, CG_P: tl.constexpr, KG_P: tl.constexpr,
    R: tl.constexpr, S: tl.constexpr, RS_P: tl.constexpr, EVEN_G: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr, IS_FP32: tl.constexpr, UPCAST: tl.constexpr,
    NEED_I64: tl.constexpr, ACC_DTYPE: tl.constexpr,
    GPT: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """All taps in one program: B = the [BLOCK_Q, taps x GPT*Cg] im2col tile, gathered from
    L1 (9 shifted loads of one x neighbourhood), so dy and x stream through the SM once
    instead of once per tap. Waste: taps padded to RS_P plus the GPT block-diagonal."""
    JW: tl.constexpr = GPT * CG_P
    DENSE: tl.constexpr = (CG == CG_P) and EVEN_G
    gc = tl.program_id(0)
    split = tl.program_id(1)
    g0 = gc * GPT
    ik = tl.arange(0, GPT * KG_P)
    i_gl = ik // KG_P
    i_k = ik % KG_P
    i_ok = (i_k < KG) & (g0 + i_gl < G)
    kout = (g0 + i_gl) * KG + i_k
    tap = tl.arange(0, RS_P)
    t_ok = tap < R * S
    tr = tap // S
    ts = tap % S
    jc = tl.arange(0, JW)
    j_ok = (jc % CG_P < CG) & (g0 + jc // CG_P < G)
    cin = (g0 + jc // CG_P) * CG + jc % CG_P
    if NEED_I64:
        kout = kout.to(tl.int64)
        cin = cin.to(tl.int64)
    acc = tl.zeros((GPT * KG_P, RS_P * JW), dtype=ACC_DTYPE)
    q_lo = split * CHUNK
    q_hi = tl.minimum(q_lo + CHUNK, Q)
    for qb in range(q_lo, q_hi, BLOCK_Q):
        q = qb + tl.arange(0, BLOCK_Q)
        q_ok = q < q_hi
        n, oh, ow = pixel_coords(q, Ho, Wo, NEED_I64)
        a = tl.load(dy_ptr + (kout * syk)[:, None] + (n * syn + oh * syh + ow * syw)[None, :],
                    mask=i_ok[:, None] & q_ok[None, :], other=0.0)
        ih = (oh * SH - PT)[:, None] + (tr * DH)[None, :]          # [BLOCK_Q, RS_P]
        iw = (ow * SW - PL)[:, None] + (ts * DW)[None, :]
        ok = q_ok[:, None] & t_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        off = (n * sxn)[:, None] + ih * sxh + iw * sxw
        ptr = x_ptr + off[:, :, None] + (cin * sxc)[None, None, :]
        if DENSE:
            b3 = tl.load(ptr, mask=ok[:, :, None], other=0.0)
        else:
            b3 = tl.load(ptr, mask=ok[:, :, None] & j_ok[None, None, :], other=0.0)
        b = tl.reshape(b3, (BLOCK_Q, RS_P * JW))
        acc = mma(a, b, acc, USE_DOT, IS_FP32, PREC, UPCAST, ACC_DTYPE)
    # Column j = (tap, gl, c): keep gl == the row's group and real taps/channels.
    jj = tl.arange(0, RS_P * JW)
    jt = jj // JW
    jgl = (jj % JW) // CG_P
    jcc = jj % CG_P
    w_off = (kout * (CG * R * S))[:, None] + (jcc * (R * S) + jt)[None, :]
    keep = ((i_gl[:, None] == jgl[None, :]) & i_ok[:, None]
            & ((jcc < CG) & (jt < R * S))[None, :])
    base = split.to(tl.int64) * (G * KG * CG * R * S)
    tl.store(part_ptr + base + w_off, acc, mask=keep)


# KIND "tap": one program per tap; "taps": all taps in one program. PROGS: programs per SM
# the pixel split aims at. Measured (H200, bf16, two runs): "taps" x 64 pixels won the
# 4-channel layer (92 us vs "tap"'s 151); "tap" GPT_X=2 won the others (33-53 us, where the
# "taps" accumulator is too wide: 63-95 us). With PROGS=4 the small layers run only 1-2
# programs per SM through long serial reductions; the PROGS=16 variants (not timed in
# those runs) split the pixels 4x finer.
WGRAD_CONFIGS = [
    dict(KIND="taps", GPT_X=1, BLOCK_Q=64, num_warps=4, num_stages=2),
    dict(KIND="tap", GPT_X=2, BLOCK_Q=64, num_warps=4, num_stages=3),
    dict(KIND="taps", GPT_X=1, BLOCK_Q=64, PROGS=16, num_warps=4, num_stages=2),
    dict(KIND="tap", GPT_X=2, BLOCK_Q=64, PROGS=16, num_warps=4, num_stages=3),
    dict(KIND="tap", GPT_X=1, BLOCK_Q=128, num_warps=4, num_stages=3),
]
WGRAD_INTERPRET_CONFIG = dict(KIND="taps", GPT_X=1, BLOCK_Q=32)
WGRAD_FP64_CONFIG = dict(KIND="tap", GPT_X=1, BLOCK_Q=16, num_warps=4, num_stages=1)
WGRAD_FP64_INTERPRET_CONFIG = dict(KIND="tap", GPT_X=1, BLOCK_Q=16)


# --------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GroupedPolicy(Policy):
    """The grouped family's tile lists and choices (defaults: as measured on an H200)."""
    # First sight (no tuned or shipped tile), from the H200 runs above: TF32 takes GPT_X=1
    # x 128 or 64 pixels (won the 16- and 32-channel layers), bf16 the list's first tile
    # (GPT_X=2 x 128, 5 of 7 layers); grad_weight "taps" for 4 channels a group, else
    # "tap" GPT_X=2.
    fwd: Tiles = Tiles("grouped_fwd", tuple(FWD_CONFIGS), INTERPRET_CONFIG,
                       (Prefer((2, 1), {"bits": (32, None)}),))
    grad_input: Tiles = Tiles("grouped_bwd_input", tuple(BWD_INPUT_CONFIGS), INTERPRET_CONFIG)
    grad_weight: Tiles = Tiles("grouped_bwd_weight", tuple(WGRAD_CONFIGS),
                               WGRAD_INTERPRET_CONFIG,
                               (Prefer((0,), {"cg": (None, 5)}), Prefer((1, 0))))
    # fp64: the CUDA-core tiles, small, no tuning (GPU, interpreter)
    fp64: tuple = (FP64_CONFIG, FP64_INTERPRET_CONFIG)
    grad_weight_fp64: tuple = (WGRAD_FP64_CONFIG, WGRAD_FP64_INTERPRET_CONFIG)
    # "taps" keeps a [GPT*Kg, taps*GPT*Cg] fp32 accumulator: at most this many per warp.
    taps_acc_per_warp: int = 1024
    # programs per SM the pixel split aims at (a tile's PROGS overrides)
    grad_weight_programs_per_sm: int = 4


POLICY = GroupedPolicy()


def _pick(policy, tiles, fp64, key, t, launch, prune, shape):
    if t.dtype == torch.float64 and tiles.name not in policy.force:
        return dict(fp64[0] if t.device.type == "cuda" else fp64[1])
    return tune(policy, tiles, key, t.device, launch, prune, shape)


def _check_width(cg, kg, name):
    if cg > MAX_GROUP_WIDTH or kg > MAX_GROUP_WIDTH:
        raise ValueError(f"fastconv.{name}: {cg} input / {kg} output channels per group; this "
                         f"kernel handles at most {MAX_GROUP_WIDTH} (use triton_igemm)")


class _Conv:
    """The shared forward / grad_input kernel for one geometry: src (x or dy) convolved
    into dst (y or dx); `transposed` for grad_input, with the roles of input and output
    channels swapped (ci, co: channels per group read, written)."""

    def __init__(self, src, w, dst, ci, co, groups, stride, padding, dilation, transposed,
                 activation, policy):
        n, _, hs, ws = src.shape
        _, _, hd, wd = dst.shape
        r, s = w.shape[2], w.shape[3]
        self.ci, self.co, self.groups, self.transposed = ci, co, groups, transposed
        self.size, self.device = tuple(dst.shape), src.device
        # the output layout: PyTorch's rule (channels_last if the input or weight is)
        self.cl = is_channels_last(src) or (not transposed and is_channels_last(w))
        # grad_input with stride > 1: one program per stride phase (see _grouped_kernel),
        # so no tap is visited by pixels it does not reach. Dilated ones keep the masked loop.
        self.phased = transposed and tuple(stride) != (1, 1) and tuple(dilation) == (1, 1)
        if self.phased:
            self.m = n * triton.cdiv(hd, stride[0]) * triton.cdiv(wd, stride[1])
            tr, ts = triton.cdiv(r, stride[0]), triton.cdiv(s, stride[1])
        else:
            self.m, tr, ts = n * hd * wd, 1, 1
        self.phases = stride[0] * stride[1] if self.phased else 1
        swk, swc, swr, sws = w.stride()
        kg = co if not transposed else ci
        # Weight offsets of (ci, co): forward w[g*Kg + co, ci], transposed w[g*Kg + ci, co].
        sw_ci, sw_co = (swc, swk) if not transposed else (swk, swc)
        self.scalars = (hs, ws, hd, wd, self.m, groups, *src.stride(), kg * swk, sw_ci, sw_co,
                        swr, sws, *dst.stride(), stride[0], stride[1], padding[0], padding[2],
                        dilation[0], dilation[1])
        self.const = dict(CI=ci, CO=co, CI_P=triton.next_power_of_2(ci),
                          CO_P=triton.next_power_of_2(co), R=r, S=s, TRANSPOSED=transposed,
                          ACT=activation_code(activation), NEED_I64=policy.needs_int64(src, w, dst),
                          PHASED=self.phased, TR=tr, TS=ts, **dot_args(src.dtype))
        self.taps = r * s

    def kernel_args(self, cfg, has_bias):
        """(grid, constexprs and options) of cfg: every parameter after the scalars by name,
        the defaulted ones included (Launch's direct path needs them all)."""
        direct, gpt, block_m, opts, kind = _resolve(cfg, self.ci, self.co, self.groups)
        # "bdk": the first TB = 2^k <= R*S taps as one dot (forward only)
        tb = 1 << self.taps.bit_length() - 1 if kind == "bdk" and not self.transposed else 0
        grid = (triton.cdiv(self.m, block_m) * triton.cdiv(self.groups, gpt), self.phases)
        return grid, dict(HAS_BIAS=has_bias, EVEN_G=self.groups % gpt == 0, DIRECT=direct,
                          GPT=gpt, BLOCK_M=block_m, TB=tb, PIPE=kind == "bdp", **self.const,
                          **opts)

    def launch_once(self, cfg, src, w, b, dst):
        grid, kw = self.kernel_args(cfg, b is not None)
        jit_launch(_grouped_kernel, grid, src, w, w if b is None else b, dst, *self.scalars, **kw)

    def build(self, cfg, has_bias) -> Plan:
        # The output (dst) is fully written: programs cover every group chunk and every
        # pixel (per stride phase when PHASED), masked only outside the tensor.
        grid, kw = self.kernel_args(cfg, has_bias)
        fast = Launch(_grouped_kernel, grid, 4, self.scalars, kw, self.device)
        size, cl = self.size, self.cl
        if self.transposed:
            def run(dy, w):
                dx = new_output(size, dy, cl)
                fast(dy, w, w, dx)
                return dx
            slots = (0, 1, 1, 3)
        else:
            def run(x, w, bias):
                y = new_output(size, x, cl)
                fast(x, w, w if bias is None else bias.contiguous(), y)
                return y
            slots = (0, 1, 2, 3)
        return Plan(run, fast, steps=output_steps(fast, size, cl, slots))


def _plan_conv2d(x, w, bias, stride, padding, dilation, groups, activation, policy):
    name = "triton_grouped_conv2d"
    check_operands(name, x, w, groups)
    check_groups(name, x.shape, w.shape, groups)
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    kg = k // groups
    _check_width(cg, kg, name)
    if bias is not None and (bias.dim() != 1 or bias.numel() != k or bias.dtype != x.dtype):
        raise ValueError(f"fastconv.{name}: bias must be a 1-D {x.dtype} tensor of {k} "
                         f"elements, got {tuple(bias.shape)} {bias.dtype}")
    ho, wo = out_hw(h, wd, r, s, stride, padding, dilation)
    check_output(name, ho, wo)
    cl = is_channels_last(x) or is_channels_last(w)
    if n == 0:
        return empty_plan((n, k, ho, wo), cl)
    y = new_output((n, k, ho, wo), x, cl)
    conv = _Conv(x, w, y, cg, kg, groups, stride, padding, dilation, False, activation, policy)
    key = tune_key(x, w, n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups)
    b0 = None if bias is None else bias.contiguous()
    cfg = _pick(policy, policy.fwd, policy.fp64, key, x,
                lambda cfg: conv.launch_once(cfg, x, w, b0, y), _prune(cg, kg, groups, x.dtype),
                features(n * ho * wo, kg, cg, x.dtype, stride))
    return conv.build(cfg, bias is not None)


def _plan_grad_input(dy, w, input_size, stride, padding, dilation, groups, policy):
    name = "triton_grouped_conv2d_grad_input"
    check_operands(name, dy, w, groups)
    check_groups(name, input_size, w.shape, groups, "input_size")
    n, c, h, wd = input_size
    k, cg, r, s = w.shape
    kg = k // groups
    _check_width(cg, kg, name)
    check_grad_output(name, dy, input_size, w.shape, stride, padding, dilation)
    cl = is_channels_last(dy)
    if n * h * wd == 0:
        return empty_plan(tuple(input_size), cl)
    dx = new_output(tuple(input_size), dy, cl)
    conv = _Conv(dy, w, dx, kg, cg, groups, stride, padding, dilation, True, "none", policy)
    key = tune_key(dy, w, n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups)
    cfg = _pick(policy, policy.grad_input, policy.fp64, key, dy,
                lambda cfg: conv.launch_once(cfg, dy, w, None, dx),
                _prune(kg, cg, groups, dy.dtype), features(n * h * wd, cg, kg, dy.dtype, stride))
    return conv.build(cfg, False)


def _plan_grad_weight(dy, x, weight_size, stride, padding, dilation, groups, policy):
    name = "triton_grouped_conv2d_grad_weight"
    check_operands(name, dy, x, groups)
    check_groups(name, x.shape, weight_size, groups)
    k, cg, r, s = weight_size
    n, c, h, wd = x.shape
    _check_width(cg, k // groups, name)
    ho, wo = check_grad_output(name, dy, x.shape, weight_size, stride, padding, dilation)
    if n * ho * wo == 0:
        return empty_plan(tuple(weight_size), False, zeros=True)
    gw = _GradWeight(dy, x, weight_size, stride, padding, dilation, groups, policy)
    key = tune_key(x, dy, n, c, h, wd, k, cg, r, s, stride, padding, dilation, groups)
    cfg = _pick(policy, policy.grad_weight, policy.grad_weight_fp64, key, x,
                lambda cfg: gw.launch_once(cfg, dy, x), gw.prune,
                features(n * ho * wo, k // groups, cg, x.dtype, stride))
    return gw.build(cfg)


class _GradWeight:
    """grad_weight for one geometry: per tap ("tap") or for all taps ("taps") and GPT
    groups, the block-diagonal dot over a chunk of the pixels."""

    def __init__(self, dy, x, weight_size, stride, padding, dilation, groups, policy):
        k, cg, r, s = weight_size
        n, c, h, wd = x.shape
        ho, wo = dy.shape[2], dy.shape[3]
        self.weight_size, self.groups, self.device = tuple(weight_size), groups, x.device
        self.q, self.cg, self.kg, self.taps = n * ho * wo, cg, k // groups, r * s
        self.part_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.sms, self.policy = num_sms(x.device, 4), policy
        self.rs_p = triton.next_power_of_2(r * s)
        self.scalars = (h, wd, ho, wo, self.q, groups)
        self.strides = (*dy.stride(), *x.stride(), stride[0], stride[1], padding[0], padding[2],
                        dilation[0], dilation[1])
        self.const = dict(CG=cg, KG=self.kg, CG_P=triton.next_power_of_2(cg),
                          KG_P=triton.next_power_of_2(self.kg), R=r, S=s,
                          NEED_I64=policy.needs_int64(dy, x), **dot_args(x.dtype))

    def kernel_args(self, cfg):
        """(kernel, grid, scalar args, constexprs and options, partial-sum size) of cfg. Both
        kernels write every element of part [split, K, Cg, R, S]: per split, the programs
        cover every (tap, group chunk) and store each group's whole [Kg, Cg] diagonal block
        (zeros for an empty chunk)."""
        meta, opts = launch_meta(cfg)
        gpt = _min_gpt(self.cg, self.kg) * cfg["GPT_X"]
        taps = cfg.get("KIND") == "taps"
        tiles = (1 if taps else self.taps) * triton.cdiv(self.groups, gpt)
        programs = cfg.get("PROGS", self.policy.grad_weight_programs_per_sm) * self.sms
        split, chunk = split_reduction(self.q, cfg["BLOCK_Q"], tiles, programs, min_blocks=4)
        kw = dict(GPT=gpt, BLOCK_Q=meta["BLOCK_Q"], **self.const, **opts)
        kernel = _grouped_wgrad_kernel
        if taps:
            kernel = _grouped_wgrad_taps_kernel
            kw.update(RS_P=self.rs_p, EVEN_G=self.groups % gpt == 0)
        return (kernel, (tiles, split), (*self.scalars, chunk, *self.strides), kw,
                (split, *self.weight_size))

    def launch_once(self, cfg, dy, x):
        kernel, grid, scalars, kw, part_size = self.kernel_args(cfg)
        part = torch.empty(part_size, dtype=self.part_dtype, device=self.device)
        jit_launch(kernel, grid, dy, x, part, *scalars, **kw)
        return part

    def prune(self, cfg):
        gpt = _min_gpt(self.cg, self.kg) * cfg["GPT_X"]
        if cfg["GPT_X"] > 1 and gpt > triton.next_power_of_2(self.groups):
            return False
        if cfg.get("KIND") == "taps":
            acc = (gpt * triton.next_power_of_2(self.kg) * self.rs_p * gpt
                   * triton.next_power_of_2(self.cg))
            return acc <= self.policy.taps_acc_per_warp * cfg["num_warps"]
        return True

    def build(self, cfg) -> Plan:
        kernel, grid, scalars, kw, part_size = self.kernel_args(cfg)
        fast = Launch(kernel, grid, 3, scalars, kw, self.device)
        return grad_weight_plan(fast, part_size, self.part_dtype, self.weight_size, self.device)


FAMILY = Family("grouped", POLICY, _plan_conv2d, _plan_grad_input, _plan_grad_weight)
conv2d, conv2d_grad_input, conv2d_grad_weight = FAMILY.entries()
