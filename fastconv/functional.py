"""fastconv.conv2d: torch.nn.functional.conv2d's exact semantics on fastconv kernels."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import _autocast, _eager, registry
from ._settings import settings as _settings
from ._ops import ACTIVATIONS
from .spec import ConvSpec

Tensor = torch.Tensor
_is_compiling = torch.compiler.is_compiling
_any_autocast = torch._C._is_any_autocast_enabled

IntOrPair = Union[int, Sequence[int]]


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
    key = _cache_key(input, weight, bias, stride, padding, dilation, groups, _SPEC_ONLY, None)
    hit = _lookup(key)
    if hit is not None:
        unbatched, spec = hit[0], hit[1]
        return (input.unsqueeze(0) if unbatched else input), unbatched, spec
    x, unbatched, spec = _validate(input, weight, bias, stride, padding, dilation, groups)
    _store(key, (unbatched, spec))
    return x, unbatched, spec


def _validate(input, weight, bias, stride, padding, dilation, groups):
    """conv_spec's checks, uncached: every error fastconv.conv2d raises for bad geometry."""
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
    # A device no algorithm runs on (meta) is checked against every algorithm's dtypes.
    allowed = registry.dtypes(input.device.type) or registry.dtypes()
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
    Under torch.autocast the result has F.conv2d's dtype (fastconv/_autocast.py).
    """
    if _any_autocast() and isinstance(input, Tensor) and torch.is_autocast_enabled(input.device.type):
        return _autocast.conv2d(input, weight, bias, stride, padding, dilation, groups, algo,
                                activation)
    return run(plan(input, weight, bias, stride, padding, dilation, groups, algo, activation),
               input, weight, bias)


class Plan:
    """A validated call: the algorithm and the op's arguments, cached per geometry."""
    __slots__ = ("unbatched", "spec", "alg", "op", "stride", "padding", "dilation", "groups",
                 "activation", "kernels", "ops", "packing")

    def __init__(self, unbatched, spec, alg, activation, eager):
        self.unbatched, self.spec, self.alg, self.activation = unbatched, spec, alg, activation
        self.op = alg.forward
        self.stride, self.padding = list(spec.stride), list(spec.padding)
        self.dilation, self.groups = list(spec.dilation), spec.groups
        # The eager path's kernels (fastconv/_eager.py); never inside a trace.
        self.kernels = alg.eager_kernels(spec.device) if (eager and alg.eager_kernels) else None
        self.ops = (alg.forward, alg.grad_input, alg.grad_weight) if self.kernels else None
        self.packing = alg.packing if eager else None  # packed weights: eager inference only


def plan(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algo="auto",
         activation=None) -> Plan:
    """Validate a conv2d call and choose its algorithm (cached: see _cache_key)."""
    key = _cache_key(input, weight, bias, stride, padding, dilation, groups, algo, activation)
    hit = _lookup(key)
    if hit is not None:
        return hit
    act = "none" if activation is None else activation
    if act not in ACTIVATIONS:
        raise ValueError(f"fastconv.conv2d: unknown activation {activation!r}; expected one of "
                         f"None, {', '.join(a for a in ACTIVATIONS if a != 'none')}")
    if not isinstance(algo, str):
        raise TypeError(f"fastconv.conv2d: algo must be a string, got {algo!r}")
    _, unbatched, spec = conv_spec(input, weight, bias, stride, padding, dilation, groups)
    alg = select(spec, algo)
    p = Plan(unbatched, spec, alg, act, eager=not _is_compiling())
    # Only a call that got this far (every check passed, an algorithm chosen) is cached.
    _store(key, p, alg)
    return p


def run(p: Plan, input, weight, bias):
    """Run a planned call: the eager kernels where _eager.plain allows, else the op."""
    x = input.unsqueeze(0) if p.unbatched else input
    if p.kernels is not None and _eager.plain(input, weight, bias):
        out = _eager.conv2d(p.kernels, p.ops, x, weight, bias, p.stride, p.padding, p.dilation,
                            p.groups, p.activation)
    else:
        out = p.op(x, weight, bias, p.stride, p.padding, p.dilation, p.groups, p.activation)
    return out.squeeze(0) if p.unbatched else out


# --- The validation cache ---------------------------------------------------------------
# Validation and algorithm choice cost far more than a small conv's kernel, and a
# model calls the same layer with the same geometry over and over. A call's outcome
# depends only on the key below, so a key that once validated maps to its result;
# calls that fail are never stored, and arguments of unusual types (bool, int
# subclasses, SymInts, ...) skip the cache and take the full path, errors included.
_CACHE_SIZE = 512
_CACHE: dict = {}
_SPEC_ONLY = object()  # conv_spec's entries: no algorithm or activation in the key


def _pair_key(v):
    """v's meaning as conv_spec's _pair would read it, or None when it must be checked."""
    t = type(v)
    if t is int:
        return (v, v)
    if t is tuple or t is list:
        if len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
            return v if t is tuple else (v[0], v[1])  # nn.Conv2d's attributes: tuples
        if len(v) == 1 and type(v[0]) is int:
            return (v[0], v[0])
    return None


def _cache_key(input, weight, bias, stride, padding, dilation, groups, algo, activation):
    """Everything validation reads, or None when this call must take the full path."""
    if _is_compiling():
        return None  # traced code specializes on its own; keep the trace free of the cache
    if not (isinstance(input, Tensor) and isinstance(weight, Tensor)) or type(groups) is not int:
        return None
    # Plain ints are the common case; _pair_key reads the rest as _pair would.
    st = (stride, stride) if type(stride) is int else _pair_key(stride)
    dil = (dilation, dilation) if type(dilation) is int else _pair_key(dilation)
    pad = padding if type(padding) is str else (
        (padding, padding) if type(padding) is int else _pair_key(padding))
    if st is None or dil is None or pad is None:
        return None
    if bias is None:
        b = None
    elif isinstance(bias, Tensor):
        b = (bias.shape, bias.dtype, bias.device)
    else:
        return None
    if (type(algo) is not str and algo is not _SPEC_ONLY) or (
            activation is not None and type(activation) is not str):
        return None
    # Shape, strides (layout), dtype and device of each tensor. The interpreter switch
    # changes what validates on the CPU only (an environment read costs ~0.7 us).
    device = input.device
    return (input.shape, input.stride(), input.dtype, device,
            weight.shape, weight.stride(), weight.dtype, weight.device,
            b, st, pad, dil, groups, algo, activation,
            device.type != "cuda" and registry.triton_interpret())


def _lookup(key):
    if key is None:
        return None
    try:
        entry = _CACHE.get(key)
    except TypeError:  # unhashable parts (symbolic sizes): no caching
        return None
    if entry is None:
        return None
    value, alg = entry
    # The registry can change (tests replace or drop algorithms): the entry holds
    # only while its algorithm is still the registered one.
    if alg is not None and not registry.is_registered(alg):
        return None
    return value


def _store(key, value, alg=None) -> None:
    if key is None:
        return
    try:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)), None)  # drop the oldest entry
        _CACHE[key] = (value, alg)
    except (TypeError, RuntimeError, StopIteration):
        pass  # unhashable key, or another thread resized the dict: just don't cache


def clear_cache() -> None:
    """Forget every cached validation (fastconv.conv2d and conv_spec)."""
    _CACHE.clear()


def select(spec: ConvSpec, algo: str = "auto") -> registry.Algorithm:
    """The algorithm that will run `spec`; ValueError if a named one doesn't apply."""
    if algo == "auto":
        alg = _settings.choose(spec)  # registry.choose unless fastconv.use_algorithms(...)
        reason = alg.why_not(spec)
        if reason is not None:
            # e.g. bf16 on CPU tensors under TRITON_INTERPRET: auto picks CPU kernels.
            raise TypeError(f"fastconv.conv2d: algo='auto' chose {alg.name!r}, but {reason}")
        return alg
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


