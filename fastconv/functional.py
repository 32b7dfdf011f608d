"""fastconv.conv2d: torch.nn.functional.conv2d's exact semantics on fastconv kernels."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import registry
from ._ops import ACTIVATIONS
from .spec import ConvSpec

IntOrPair = Union[int, Sequence[int]]

_CPU_DTYPES = (torch.float32, torch.float64)
_GPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of 2 ints, got bool")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) == 1 and isinstance(value[0], int):
            return (value[0], value[0])
        if len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a tuple of 2 ints, got {value!r}")


def _check_tensor(t, name: str, allow_none: bool = False) -> None:
    if t is None and allow_none:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastconv.conv2d: {name} must be a torch.Tensor, got {type(t).__name__}")


def _resolve_padding(padding, spatial, kernel, dilation, stride) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right). 'same' follows PyTorch: the extra pad of an
    even effective kernel goes to the bottom/right."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("fastconv.conv2d: padding='same' is not supported for strided "
                                 f"convolutions (stride={stride})")
            out = []
            for d, k in zip(dilation, kernel):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        raise ValueError(f"fastconv.conv2d: invalid padding string {padding!r}; expected 'same' "
                         "or 'valid'")
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"fastconv.conv2d: padding must be non-negative, got {(ph, pw)}")
    return (ph, ph, pw, pw)


def conv_spec(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Validate conv2d arguments exactly as fastconv.conv2d does and return
    (4-D input, was_unbatched, ConvSpec)."""
    _check_tensor(input, "input")
    _check_tensor(weight, "weight")
    _check_tensor(bias, "bias", allow_none=True)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"fastconv.conv2d: groups must be an int, got {groups!r}")
    if groups <= 0:
        raise ValueError(f"fastconv.conv2d: groups must be positive, got {groups}")
    if weight.dim() != 4:
        raise ValueError(f"fastconv.conv2d: expected a 4-D weight (out_channels, in_channels/groups, "
                         f"kH, kW), got {weight.dim()}-D with shape {tuple(weight.shape)}")
    if input.dim() not in (3, 4):
        raise ValueError(f"fastconv.conv2d: expected 3-D (unbatched) or 4-D (batched) input, got "
                         f"{input.dim()}-D with shape {tuple(input.shape)}")
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not t.dtype.is_floating_point:
            raise TypeError(f"fastconv.conv2d: {name} has dtype {t.dtype}; only floating-point "
                            "tensors are supported")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        got = f"input {input.dtype}, weight {weight.dtype}" + (f", bias {bias.dtype}" if bias is not None else "")
        raise TypeError(f"fastconv.conv2d: all tensors must have the same dtype; got {got}")
    if weight.device != input.device or (bias is not None and bias.device != input.device):
        got = f"input on {input.device}, weight on {weight.device}" + (
            f", bias on {bias.device}" if bias is not None else "")
        raise RuntimeError(f"fastconv.conv2d: all tensors must be on the same device; got {got}")
    allowed = _CPU_DTYPES if input.device.type == "cpu" and not registry.triton_interpret() else _GPU_DTYPES
    if input.dtype not in allowed:
        raise TypeError(f"fastconv.conv2d: dtype {input.dtype} is not supported on "
                        f"{input.device.type}; supported: {', '.join(map(str, allowed))}")

    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    n, c, h, w = x.shape
    k, cg, r, s = weight.shape
    if min(k, cg, r, s) <= 0:
        raise ValueError(f"fastconv.conv2d: weight has an empty dimension: {tuple(weight.shape)}")
    if c % groups != 0:
        raise ValueError(f"fastconv.conv2d: groups={groups} does not divide in_channels={c}")
    if k % groups != 0:
        raise ValueError(f"fastconv.conv2d: groups={groups} does not divide out_channels={k}")
    if cg * groups != c:
        raise ValueError(f"fastconv.conv2d: expected input with {cg * groups} channels "
                         f"(weight {tuple(weight.shape)} x groups={groups}), got {c} channels "
                         f"(input shape {tuple(input.shape)})")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != k):
        raise ValueError(f"fastconv.conv2d: bias must have shape ({k},), got {tuple(bias.shape)}")

    st = _pair(stride, "stride")
    dil = _pair(dilation, "dilation")
    if min(st) <= 0:
        raise ValueError(f"fastconv.conv2d: stride must be positive, got {st}")
    if min(dil) <= 0:
        raise ValueError(f"fastconv.conv2d: dilation must be positive, got {dil}")
    pad = _resolve_padding(padding, (h, w), (r, s), dil, st)
    eff = (dil[0] * (r - 1) + 1, dil[1] * (s - 1) + 1)
    padded = (h + pad[0] + pad[1], w + pad[2] + pad[3])
    if eff[0] > padded[0] or eff[1] > padded[1]:
        raise ValueError(f"fastconv.conv2d: kernel size {eff} (after dilation) is larger than the "
                         f"padded input {padded}")
    spec = ConvSpec.from_tensors(x, weight, st, pad, dil, groups, bias)
    return x, unbatched, spec


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: IntOrPair = 1, padding: Union[IntOrPair, str] = 0, dilation: IntOrPair = 1,
           groups: int = 1, *, algo: str = "auto", activation: Optional[str] = None) -> torch.Tensor:
    """2-D convolution with the semantics of torch.nn.functional.conv2d.

    algo: "auto" or a registered algorithm name (see fastconv.algorithms()).
    activation: None, "relu", "relu6", "silu" or "gelu", fused into the kernel's epilogue.
    """
    act = "none" if activation is None else activation
    if act not in ACTIVATIONS:
        raise ValueError(f"fastconv.conv2d: unknown activation {activation!r}; expected one of "
                         f"None, {', '.join(a for a in ACTIVATIONS if a != 'none')}")
    if not isinstance(algo, str):
        raise TypeError(f"fastconv.conv2d: algo must be a string, got {algo!r}")
    x, unbatched, spec = conv_spec(input, weight, bias, stride, padding, dilation, groups)
    alg = select(spec, algo)

    out = alg.forward(x, weight, bias, list(spec.stride), list(spec.padding), list(spec.dilation),
                      groups, act)
    return out.squeeze(0) if unbatched else out


def select(spec: ConvSpec, algo: str = "auto") -> registry.Algorithm:
    """The algorithm that will run `spec`; ValueError if a named one doesn't apply."""
    if algo == "auto":
        return registry.choose(spec)
    alg = registry.get(algo)
    reason = alg.why_not(spec)
    if reason is not None:
        raise ValueError(f"fastconv.conv2d: {reason}")
    return alg


def flops(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1) -> int:
    """Exact FLOPs (2 x MACs) of a conv2d, as torch.utils.flop_counter counts them."""
    n, c, h, w = input_shape
    x = torch.empty((n, c, h, w), device="meta")
    wt = torch.empty(tuple(weight_shape), device="meta")
    _, _, spec = conv_spec(x, wt, None, stride, padding, dilation, groups)
    return spec.flops


