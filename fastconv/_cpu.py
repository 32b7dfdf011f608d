"""The CPU algorithms (C++ in csrc/), registered once."""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the ops into torch.ops.fastconv)
from ._ops import activation_grad, output_memory_format, output_size, register_family
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


def _cost_model(algo: str):
    """explain's cache model of `algo` (fastconv/explain/model.py), imported on first use."""
    def cost(spec: ConvSpec) -> dict:
        from .explain.model import cpu_cost_model

        return cpu_cost_model(algo)(spec)
    cost.__name__ = f"{algo}_cost_model"
    return cost


register(Algorithm(
    name="reference", op="reference", devices=("cpu",), dtypes=_DTYPES, public=False,
    cost_model=_cost_model("reference"),
    summary="the plain seven-loop nest, no blocking (the baseline kernels are checked against)",
    constraints="any conv2d"))
POINTWISE_MAX_PIXELS = _C.blocking()["gemm_avx512_max_pixels"]
POINTWISE_NCHW_MAX_PLANE = _C.blocking()["gemm_avx512_nchw_via_nhwc_max_pixels"]


def _pointwise_gemm_packs(spec: ConvSpec) -> bool:
    """im2col's 1x1 layers that run our AVX-512 GEMM (csrc/pointwise_gemm_avx512.cpp) on
    weight panels, which modules pack once (pointwise_pack_weight)."""
    # Only where it beat MKL (measurements at the constants in csrc/blocking.h): up to
    # POINTWISE_MAX_PIXELS output pixels in channels_last, NCHW only for 7x7 planes (on
    # transposed copies); elsewhere im2col calls MKL's sgemm without packing.
    return (spec.groups == 1 and spec.R == 1 and spec.S == 1 and not any(spec.padding)
            and spec.dtype == torch.float32 and spec.N * spec.Ho * spec.Wo <= POINTWISE_MAX_PIXELS
            and (spec.layout == "nhwc" or spec.Ho * spec.Wo <= POINTWISE_NCHW_MAX_PLANE)
            and _C.cpu_isa() == "avx512")


def _pointwise_pack(weight, groups):
    return torch.ops.fastconv.pointwise_pack_weight(weight)


register(Algorithm(
    name="im2col", op="im2col", devices=("cpu",), dtypes=_DTYPES, cost_model=_cost_model("im2col"),
    summary="our im2col into a bounded column buffer, then a GEMM per tile (ATen BLAS); "
            "1x1 float32 layers on AVX-512: our packed GEMM (small layers, and modules)",
    constraints="any conv2d; workspace bounded (fastconv.im2col_workspace_bytes)",
    pack_weight=_pointwise_pack, forward_packed=torch.ops.fastconv.pointwise_conv2d_packed,
    packs=_pointwise_gemm_packs))
def _direct_pack(weight, groups):
    """The blocked AVX-512 tiles' layout where they apply (packed once, not per call), else
    direct_pack_weight's."""
    k, cg = weight.shape[:2]
    if _C.direct_blocked_weight_applies(weight.dtype, k, cg, groups):
        return torch.ops.fastconv.direct_pack_blocked_weight(weight, groups)
    return torch.ops.fastconv.direct_pack_weight(weight, groups)


def _direct_forward_packed(input, packed, weight_size, bias, stride, padding, dilation, groups,
                           activation="none"):
    ops = torch.ops.fastconv
    op = ops.direct_conv2d_blocked_packed if packed.dim() == 7 else ops.direct_conv2d_packed
    return op(input, packed, weight_size, bias, stride, padding, dilation, groups, activation)


register(Algorithm(
    name="direct", op="direct", devices=("cpu",), dtypes=_DTYPES, cost_model=_cost_model("direct"),
    summary="no workspace; weights packed 8 output channels innermost, AVX2 FMA register tile",
    constraints="any conv2d", pack_weight=_direct_pack, forward_packed=_direct_forward_packed))
register(Algorithm(
    name="depthwise", op="depthwise", devices=("cpu",), dtypes=_DTYPES,
    cost_model=_cost_model("depthwise"),
    summary="direct depthwise, vectorized over channels (NHWC) or pixels (NCHW)",
    constraints="groups == in_channels, any channel multiplier", applicable=_depthwise_only))


# --- direct's extra ops: weight packing (cached by modules), the packed forward,
# and the plain loop nest of the blocked algorithm (tests compare against it).
def direct_packed_shape(weight_size, groups, dtype=torch.float32):
    """Shape of direct_pack_weight(weight, groups): [G][ceil(Kg/B)][Cg][R][S][B], where B
    (output channels per packed vector) is 16 on AVX-512 for float32 groups of more than 8
    output channels, else 8 (fastconv._C.direct_pack_block)."""
    k, cg, r, s = weight_size
    kg = k // groups
    b = _C.direct_pack_block(dtype, kg)
    return [groups, -(-kg // b), cg, r, s, b]


def direct_unpack_weight(packed, weight_size, groups):
    """Inverse of direct_pack_weight in torch ops (differentiable)."""
    k, cg, r, s = weight_size
    kg = k // groups
    w = packed.permute(0, 1, 5, 2, 3, 4).reshape(groups, -1, cg, r, s)[:, :kg]
    return w.reshape(k, cg, r, s)


@torch.library.register_fake("fastconv::direct_pack_weight")
def _fake_direct_pack(weight, groups):
    return weight.new_empty(direct_packed_shape(list(weight.shape), groups, weight.dtype))


@torch.library.register_fake("fastconv::direct_conv2d_packed")
def _fake_direct_packed(input, packed_weight, weight_size, bias, stride, padding, dilation, groups,
                        activation="none"):
    size = output_size(input.shape, weight_size, stride, padding, dilation)
    return input.new_empty(size).contiguous(memory_format=output_memory_format(input, input))


# --- the 1x1 GEMM's panels (im2col's packed path): [ceil(K/32)][C][32].
POINTWISE_PANEL = _C.blocking()["gemm_avx512_panel_width"]


@torch.library.register_fake("fastconv::pointwise_pack_weight")
def _fake_pointwise_pack(weight):
    return weight.new_empty([-(-weight.shape[0] // POINTWISE_PANEL), weight.shape[1],
                             POINTWISE_PANEL])


@torch.library.register_fake("fastconv::pointwise_conv2d_packed")
def _fake_pointwise_packed(input, packed_weight, weight_size, bias, stride, padding, dilation,
                           groups, activation="none"):
    size = output_size(input.shape, weight_size, stride, padding, dilation)
    return input.new_empty(size).contiguous(memory_format=output_memory_format(input, input))


@torch.library.register_fake("fastconv::pointwise_naive_conv2d")
def _fake_pointwise_naive(input, packed_weight, weight_size, bias, stride, padding, dilation,
                          groups, activation="none"):
    return _fake_pointwise_packed(input, packed_weight, weight_size, bias, stride, padding,
                                  dilation, groups, activation)


@torch.library.register_fake("fastconv::direct_pack_blocked_weight")
def _fake_direct_pack_blocked(weight, groups):
    k, cg, r, s = weight.shape
    kg = k // groups
    gpv = 16 // kg if kg < 16 else 1
    ocv = 2 if gpv == 1 and kg % 32 == 0 else 1
    cbn = min(cg, _C.blocking()["direct_blocked_avx512_cin_block"])
    return weight.new_empty([groups // gpv, kg * gpv // (16 * ocv), cg // cbn, r, s, cbn, ocv * 16])


@torch.library.register_fake("fastconv::direct_conv2d_blocked_packed")
def _fake_direct_blocked_packed(input, packed_weight, weight_size, bias, stride, padding,
                                dilation, groups, activation="none"):
    size = output_size(input.shape, weight_size, stride, padding, dilation)
    return input.new_empty(size).contiguous(memory_format=output_memory_format(input, input))


@torch.library.register_fake("fastconv::direct_naive_conv2d")
def _fake_direct_naive(input, weight, bias, stride, padding, dilation, groups, activation="none"):
    size = output_size(input.shape, weight.shape, stride, padding, dilation)
    return input.new_empty(size).contiguous(memory_format=output_memory_format(input, weight))


def _pack_setup(ctx, inputs, output):
    weight, groups = inputs
    ctx.weight_size, ctx.groups = list(weight.shape), groups


def _pack_backward(ctx, grad):
    return direct_unpack_weight(grad, ctx.weight_size, ctx.groups), None


torch.library.register_autograd("fastconv::direct_pack_weight", _pack_backward,
                                setup_context=_pack_setup)


def _packed_setup(ctx, inputs, output):
    input, packed, weight_size, bias, stride, padding, dilation, groups, *rest = inputs
    ctx.activation = rest[0] if rest else "none"
    ctx.has_bias = bias is not None
    ctx.geom = (list(weight_size), stride, padding, dilation, groups)
    out = output if ctx.activation in ("relu", "relu6") else None
    ctx.save_for_backward(input, packed, bias, out)


def _packed_backward(ctx, grad):
    input, packed, bias, out = ctx.saved_tensors
    weight_size, stride, padding, dilation, groups = ctx.geom
    ops = torch.ops.fastconv
    grad = activation_grad(grad, ctx.activation, out, lambda: ops.direct_conv2d_packed(
        input, packed, weight_size, bias, stride, padding, dilation, groups, "none"))
    need_in, need_w, need_b = (ctx.needs_input_grad[i] for i in (0, 1, 3))
    g_in = g_w = g_b = None
    if need_in:
        weight = direct_unpack_weight(packed, weight_size, groups)
        g_in = ops.direct_conv2d_grad_input(grad, weight, list(input.shape), stride, padding,
                                            dilation, groups)
    if need_w:
        g_w = ops.direct_pack_weight(
            ops.direct_conv2d_grad_weight(grad, input, weight_size, stride, padding, dilation,
                                          groups), groups)
    if ctx.has_bias and need_b:
        g_b = grad.sum((0, 2, 3))
    return g_in, g_w, None, g_b, None, None, None, None, None


torch.library.register_autograd("fastconv::direct_conv2d_packed", _packed_backward,
                                setup_context=_packed_setup)
