"""fastconv.conv2d: torch.nn.functional.conv2d's exact semantics on fastconv kernels."""
from __future__ import annotations

import operator
import os
from typing import Optional, Sequence, Union

import torch
from torch.autograd import forward_ad

from . import _autocast, _eager, _ops, registry
from ._settings import settings as _settings
from ._ops import ACTIVATIONS
from .spec import ConvSpec

Tensor = torch.Tensor
_is_compiling = torch.compiler.is_compiling
_any_autocast = torch._C._is_any_autocast_enabled

IntOrPair = Union[int, Sequence[int]]

_INT64_MAX = 2**63 - 1
# F.conv2d rejects larger padding (aten's check in _convolution): so do we.
_MAX_PADDING = 2**62 - 1


# F.conv2d raises RuntimeError for every malformed call. These classes keep the old
# ValueError/TypeError bases too, so that both kinds of `except` clause catch them.
class ConvValueError(RuntimeError, ValueError):
    """A conv2d argument with a bad value (caught by `except RuntimeError` and `except ValueError`)."""


class ConvTypeError(RuntimeError, TypeError):
    """A conv2d argument of a bad type (caught by `except RuntimeError` and `except TypeError`)."""


class ConvNotImplementedError(NotImplementedError, TypeError):
    """A dtype or tensor kind fastconv has no kernels for (int, bool, nested, sparse, ...);
    F.conv2d raises NotImplementedError (a RuntimeError) for those it lacks too."""


class ConvOutOfMemoryError(torch.OutOfMemoryError):
    """An output or workspace larger than the device's memory, refused before allocating."""


def _int(v, name: str) -> int:
    """v as a Python int: ints, numpy integers and integer 0-d tensors (as F.conv2d), not bool."""
    if isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
        raise ConvTypeError(f"fastconv.conv2d: {name} must be an int or a tuple of 2 ints, got bool")
    try:
        i = operator.index(v)
    except TypeError:
        raise ConvTypeError(f"fastconv.conv2d: {name} must be an int or a tuple of 2 ints, got "
                            f"{v!r}") from None
    if not -_INT64_MAX - 1 <= i <= _INT64_MAX:
        raise ConvValueError(f"fastconv.conv2d: {name}={i} does not fit in int64")
    return i


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) == 1:
            v = _int(value[0], name)
            return (v, v)
        if len(value) == 2:
            return (_int(value[0], name), _int(value[1], name))
        raise ConvTypeError(f"fastconv.conv2d: {name} must be an int or a tuple of 2 ints, got "
                            f"{value!r}")
    v = _int(value, name)
    return (v, v)


def _check_tensor(t, name: str, allow_none: bool = False) -> None:
    if t is None and allow_none:
        return
    if not isinstance(t, torch.Tensor):
        raise ConvTypeError(f"fastconv.conv2d: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_nested:
        raise ConvNotImplementedError(f"fastconv.conv2d: {name} is a nested tensor; fastconv has "
                                      "kernels for dense (strided) tensors only: convolve each "
                                      "component (t.unbind()) or pad to a dense batch")
    if t.layout != torch.strided:
        raise ConvNotImplementedError(f"fastconv.conv2d: {name} has layout {t.layout}; fastconv "
                                      "has kernels for dense (torch.strided) tensors only: "
                                      "call .to_dense() first")


def _resolve_padding(padding, spatial, kernel, dilation, stride) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right). 'same' follows PyTorch: the extra pad of an
    even effective kernel goes to the bottom/right."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ConvValueError("fastconv.conv2d: padding='same' is not supported for strided "
                                 f"convolutions (stride={stride})")
            out = []
            for d, k in zip(dilation, kernel):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        raise ConvValueError(f"fastconv.conv2d: invalid padding string {padding!r}; expected 'same' "
                         "or 'valid'")
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ConvValueError(f"fastconv.conv2d: padding must be non-negative, got {(ph, pw)}")
    if max(ph, pw) > _MAX_PADDING:
        raise ConvValueError(f"fastconv.conv2d: padding {(ph, pw)} is larger than "
                             f"{_MAX_PADDING} (2**62 - 1), the most F.conv2d accepts")
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
        raise ConvTypeError(f"fastconv.conv2d: groups must be an int, got {groups!r}")
    if groups <= 0:
        raise ConvValueError(f"fastconv.conv2d: groups must be positive, got {groups}")
    if groups > _INT64_MAX:
        raise ConvValueError(f"fastconv.conv2d: groups={groups} does not fit in int64")
    if weight.dim() != 4:
        raise ConvValueError(f"fastconv.conv2d: expected a 4-D weight (out_channels, in_channels/groups, "
                         f"kH, kW), got {weight.dim()}-D with shape {tuple(weight.shape)}")
    if input.dim() not in (3, 4):
        raise ConvValueError(f"fastconv.conv2d: expected 3-D (unbatched) or 4-D (batched) input, got "
                         f"{input.dim()}-D with shape {tuple(input.shape)}")
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not t.dtype.is_floating_point:
            raise ConvNotImplementedError(f"fastconv.conv2d: {name} has dtype {t.dtype}; only floating-point "
                            "tensors are supported")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        got = f"input {input.dtype}, weight {weight.dtype}" + (f", bias {bias.dtype}" if bias is not None else "")
        raise ConvTypeError(f"fastconv.conv2d: all tensors must have the same dtype; got {got}")
    if weight.device != input.device or (bias is not None and bias.device != input.device):
        got = f"input on {input.device}, weight on {weight.device}" + (
            f", bias on {bias.device}" if bias is not None else "")
        raise RuntimeError(f"fastconv.conv2d: all tensors must be on the same device; got {got}")
    # A device no algorithm runs on (meta) is checked against every algorithm's dtypes.
    allowed = registry.dtypes(input.device.type) or registry.dtypes()
    if input.dtype not in allowed:
        raise ConvNotImplementedError(f"fastconv.conv2d: dtype {input.dtype} is not supported on "
                        f"{input.device.type}; supported: {', '.join(map(str, allowed))}")

    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    n, c, h, w = x.shape
    k, cg, r, s = weight.shape
    # in_channels = 0 is F.conv2d's empty reduction (weight (K, 0, R, S)): see _no_channels.
    if min(k, r, s) <= 0 or (cg == 0) != (c == 0):
        raise ConvValueError(f"fastconv.conv2d: weight has an empty dimension: {tuple(weight.shape)}")
    if c % groups != 0:
        raise ConvValueError(f"fastconv.conv2d: groups={groups} does not divide in_channels={c}")
    if k % groups != 0:
        raise ConvValueError(f"fastconv.conv2d: groups={groups} does not divide out_channels={k}")
    if cg * groups != c:
        raise ConvValueError(f"fastconv.conv2d: expected input with {cg * groups} channels "
                         f"(weight {tuple(weight.shape)} x groups={groups}), got {c} channels "
                         f"(input shape {tuple(input.shape)})")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != k):
        raise ConvValueError(f"fastconv.conv2d: bias must have shape ({k},), got {tuple(bias.shape)}")

    st = _pair(stride, "stride")
    dil = _pair(dilation, "dilation")
    if min(st) <= 0:
        raise ConvValueError(f"fastconv.conv2d: stride must be positive, got {st}")
    if min(dil) <= 0:
        raise ConvValueError(f"fastconv.conv2d: dilation must be positive, got {dil}")
    pad = _resolve_padding(padding, (h, w), (r, s), dil, st)
    eff = (dil[0] * (r - 1) + 1, dil[1] * (s - 1) + 1)
    padded = (h + pad[0] + pad[1], w + pad[2] + pad[3])
    # Python ints don't wrap, but the kernels compute these in int64.
    if max(*eff, *padded) > _INT64_MAX:
        raise ConvValueError(f"fastconv.conv2d: the padded input {padded} or the dilated kernel "
                             f"{eff} does not fit in int64")
    if eff[0] > padded[0] or eff[1] > padded[1]:
        raise ConvValueError(f"fastconv.conv2d: kernel size {eff} (after dilation) is larger than the "
                         f"padded input {padded}")
    try:
        spec = ConvSpec.from_tensors(x, weight, st, pad, dil, groups, bias)
    except RuntimeError:
        # Under vmap a batched tensor can't answer is_contiguous(channels_last) (NYI); the
        # layout only steers the algorithm choice, so decide as for NCHW.
        meta = torch.empty(tuple(x.shape), device="meta")
        spec = ConvSpec.from_tensors(meta, weight, st, pad, dil, groups, bias).with_(
            device=x.device.type, dtype=x.dtype)
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
    """A validated call: the algorithm and the op's arguments, cached per geometry.
    alg is None for in_channels = 0 (no kernel runs: see _no_channels)."""
    __slots__ = ("unbatched", "spec", "alg", "op", "stride", "padding", "dilation", "groups",
                 "activation", "kernels", "ops", "family_ops", "_packing")

    def __init__(self, unbatched, spec, alg, activation, eager):
        self.unbatched, self.spec, self.alg, self.activation = unbatched, spec, alg, activation
        self.stride, self.padding = list(spec.stride), list(spec.padding)
        self.dilation, self.groups = list(spec.dilation), spec.groups
        if alg is None:
            self.op, self.kernels, self.ops, self.family_ops, self._packing = (
                _no_channels, None, None, None, None)
            return
        self.op = alg.forward
        self.family_ops = (alg.forward, alg.grad_input, alg.grad_weight)
        # The eager path's kernels (fastconv/_eager.py); never inside a trace.
        self.kernels = alg.eager_kernels(spec.device) if (eager and alg.eager_kernels) else None
        self.ops = self.family_ops if self.kernels else None
        # Packed weights: eager inference only, for the convs the algorithm packs.
        self._packing = (alg.packing if eager and (alg.packs is None or alg.packs(spec))
                         else None)

    @property
    def packing(self):
        """(pack_weight, forward_packed) for eager inference, or None. The packed ops have
        no forward-mode or functorch rules: None under those (checked per call, since the
        plan is cached across them)."""
        if self._packing is None or _transformed():
            return None
        return self._packing


def _transformed() -> bool:
    """Forward-mode AD or a torch.func transform is active (see _ops.TransformConv2d)."""
    return forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


def _no_channels(x, weight, bias, stride, padding, dilation, groups, activation):
    """in_channels = 0: an empty reduction, so no kernel has anything to compute. Its output
    is F.conv2d's own, shape included (torch 2.13 gives N x 0 x Ho x Wo here, not N x K x
    Ho x Wo; PyTorch's test_conv_empty_channel checks that bias and weight get zero grads)."""
    pad = (padding[0], padding[2])
    if padding[0] != padding[1] or padding[2] != padding[3]:
        x = torch.nn.functional.pad(x, (padding[2], padding[3], padding[0], padding[1]))
        pad = (0, 0)
    out = torch.nn.functional.conv2d(x, weight, bias, stride, pad, dilation, groups)
    return _ops.apply_activation(out, activation)


def plan(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algo="auto",
         activation=None) -> Plan:
    """Validate a conv2d call and choose its algorithm (cached: see _cache_key)."""
    key = _cache_key(input, weight, bias, stride, padding, dilation, groups, algo, activation)
    hit = _lookup(key)
    if hit is not None:
        return hit
    act = "none" if activation is None else activation
    if act not in ACTIVATIONS:
        raise ConvValueError(f"fastconv.conv2d: unknown activation {activation!r}; expected one "
                             f"of None, {', '.join(a for a in ACTIVATIONS if a != 'none')}")
    if not isinstance(algo, str):
        raise ConvTypeError(f"fastconv.conv2d: algo must be a string, got {algo!r}")
    _, unbatched, spec = conv_spec(input, weight, bias, stride, padding, dilation, groups)
    if spec.C == 0:
        if algo != "auto":
            _get(algo)
        alg = None
    else:
        alg = select(spec, algo)
        if not _is_compiling():  # traced sizes may be symbolic; the compiled call allocates
            check_memory(spec, alg)
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
    elif p.family_ops is not None and not _is_compiling() and _transformed():
        out = _ops.transform_conv2d(p.family_ops, x, weight, bias, p.stride, p.padding,
                                    p.dilation, p.groups, p.activation)
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
    if input.is_nested or weight.is_nested:  # no .shape: the full path names the problem
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


def _get(algo: str) -> registry.Algorithm:
    try:
        return registry.get(algo)
    except ValueError as e:
        raise ConvValueError(f"fastconv.conv2d: {e}") from None


def _meta_stand_in(spec: ConvSpec, alg: Optional[registry.Algorithm]) -> ConvSpec:
    """Meta tensors run an op's fake kernel, which every algorithm has: decide applicability
    as on the device the algorithm runs on (auto: the CPU for CPU dtypes, else CUDA)."""
    if alg is not None:
        device = alg.devices[0]
    else:
        cuda_algos = any("cuda" in a.devices for a in registry.algorithms())
        device = "cpu" if spec.dtype in registry.dtypes("cpu") or not cuda_algos else "cuda"
    return spec.with_(device=device)


def select(spec: ConvSpec, algo: str = "auto") -> registry.Algorithm:
    """The algorithm that will run `spec`; ConvValueError if a named one doesn't apply."""
    if algo == "auto":
        probe = _meta_stand_in(spec, None) if spec.device == "meta" else spec
        alg = _settings.choose(probe)  # registry.choose unless fastconv.use_algorithms(...)
        reason = alg.why_not(probe)
        if reason is not None:
            # e.g. bf16 on CPU tensors under TRITON_INTERPRET: auto picks CPU kernels.
            raise ConvTypeError(f"fastconv.conv2d: algo='auto' chose {alg.name!r}, but {reason}")
        return alg
    alg = _get(algo)
    probe = _meta_stand_in(spec, alg) if spec.device == "meta" else spec
    reason = alg.why_not(probe)
    if reason is not None:
        raise ConvValueError(f"fastconv.conv2d: {reason}")
    return alg


# --- Up-front size check ---------------------------------------------------------------------
# A tensor larger than the device's whole memory can never be allocated; asking for one
# anyway leaves the outcome to the OS's overcommit policy (or the CUDA caching allocator's
# retries). The bound is the device's total memory (not what is free now, which changes
# and costs a syscall to read): it refuses only what cannot fit on any run. Checked once
# per plan. The other buffers are bounded: im2col's column buffer by its tiling (checked
# here too, as its minimum tile can exceed the bound for huge C*R*S), depthwise's and the
# Triton grad_weight split partials by the weight's size times a fixed split count.
_MEMORY: dict = {}


def device_memory_bytes(device: str) -> Optional[int]:
    """Total memory of a device type's device 0, or None where nothing is allocated (meta)."""
    if device not in _MEMORY:
        if device == "cpu":
            _MEMORY[device] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        elif device == "cuda" and torch.cuda.is_available():
            _MEMORY[device] = torch.cuda.get_device_properties(
                torch.cuda.current_device()).total_memory
        else:
            _MEMORY[device] = None
    return _MEMORY[device]


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(spec: ConvSpec, alg: registry.Algorithm) -> None:
    """ConvOutOfMemoryError naming the size and the limit when the output or im2col's
    workspace cannot fit in the device's memory."""
    limit = device_memory_bytes(spec.device)
    if limit is None:
        return
    out_bytes = spec.N * spec.K * spec.Ho * spec.Wo * spec.element_size
    if out_bytes > limit:
        raise ConvOutOfMemoryError(
            f"fastconv.conv2d: the output {list(spec.output_shape)} ({spec.dtype}) needs "
            f"{_gib(out_bytes)}, more than the {_gib(limit)} of memory of this {spec.device} "
            "device")
    if alg.op == "im2col":
        from . import _C

        ws = _C.im2col_workspace_bytes(list(spec.input_shape), list(spec.weight_shape),
                                       list(spec.stride), list(spec.padding), list(spec.dilation),
                                       spec.groups, spec.element_size)
        if out_bytes + ws > limit:
            raise ConvOutOfMemoryError(
                f"fastconv.conv2d: algo='im2col' needs a {_gib(ws)} column buffer besides the "
                f"{_gib(out_bytes)} output, more than the {_gib(limit)} of memory of this "
                f"{spec.device} device")


def flops(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1) -> int:
    """Exact FLOPs (2 x MACs) of a conv2d, as torch.utils.flop_counter counts them."""
    n, c, h, w = input_shape
    x = torch.empty((n, c, h, w), device="meta")
    wt = torch.empty(tuple(weight_shape), device="meta")
    _, _, spec = conv_spec(x, wt, None, stride, padding, dilation, groups)
    return spec.flops


