"""fastconv.nn.Conv2d: a drop-in torch.nn.Conv2d that runs on fastconv kernels.

It is a subclass with the same parameters, buffers and state_dict keys, so an
nn.Conv2d checkpoint loads into it and the reverse. Two additions:

- ``algo``: "auto" or a registered algorithm name (``fastconv.algorithms()``);
- ``activation``: None, "relu", "relu6", "silu" or "gelu", fused into the epilogue
  (``fastconv.fuse`` sets it when it folds a following activation module).

Per call, the module does no validation: the plan of a call (algorithm, op arguments) comes
from fastconv.conv2d's cache, keyed by the input's and weight's shape, strides, dtype and
device and by the module's stride, padding, dilation, groups, algo and activation as they are
at that call, so changing any of them (``fastconv.fuse`` sets ``activation``) plans anew.
The plan then runs like fastconv.conv2d, through its eager fast path where that applies
(fastconv/_eager.py).

Inference with a packed weight: an algorithm may declare a "prepare weight" step
(``Algorithm.packing``: ``pack_weight(weight, groups)`` and ``forward_packed(...)``). When no
gradient flows through the call (``torch.no_grad()``/``inference_mode`` or parameters
with ``requires_grad=False``) the module packs the weight once and reuses it. The
cache key is the weight's version counter, data pointer, shape, strides, device and
dtype, so an optimizer step (in-place update), ``.to()``, ``load_state_dict`` and
``param.data = ...`` all invalidate it; ``_apply`` and ``_load_from_state_dict`` also
drop it eagerly. Under autocast the module follows the ops' registered autocast rule
(fastconv/_autocast.py: the result has F.conv2d's dtype). Training, and anything under
``torch.compile``, uses the regular op with its registered autograd. The one change the key cannot see is an in-place
write through ``weight.data`` (``.data`` does not share the version counter); call
``invalidate_packed_weight()`` after such a write.
"""
from __future__ import annotations

from typing import Optional

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .. import _autocast, functional as _functional
from .._ops import ACTIVATIONS

# Attributes fastconv adds to an nn.Conv2d (convert/revert add and remove exactly these).
CACHE_ATTRS = ("_packed_weight", "_packed_key", "_packed_src")


def check_activation(activation: Optional[str]) -> Optional[str]:
    if activation is None or activation == "none":
        return None
    if activation not in ACTIVATIONS:
        raise ValueError(f"fastconv.nn.Conv2d: unknown activation {activation!r}; expected one of "
                         f"None, {', '.join(a for a in ACTIVATIONS if a != 'none')}")
    return activation


def check_algo(algo) -> str:
    if not isinstance(algo, str):
        raise TypeError(f"fastconv.nn.Conv2d: algo must be a string, got {algo!r}")
    if algo != "auto":
        from .. import registry

        registry.get(algo)  # ValueError naming the known algorithms
    return algo


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d on fastconv kernels (same constructor, plus ``algo`` and ``activation``).

    Parameters: ``out_channels * in_channels / groups * kH * kW`` (+ ``out_channels`` bias).
    FLOPs: ``2 * N * out_channels * Ho * Wo * (in_channels / groups) * kH * kW``
    (what torch.utils.flop_counter counts; the bias add is not counted).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, algo: str = "auto",
                 activation: Optional[str] = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device=device, dtype=dtype)
        self.algo = check_algo(algo)
        self.activation = check_activation(activation)
        self.invalidate_packed_weight()

    # -- forward -----------------------------------------------------------------
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.weight, self.bias)

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            # Like nn.Conv2d: pad explicitly, then convolve with no padding.
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        if torch.is_autocast_enabled(input.device.type):
            return _autocast.conv2d(input, weight, bias, self.stride, padding, self.dilation,
                                    self.groups, self.algo, self.activation)
        # The validated plan (algorithm, op arguments) is cached per input geometry by
        # fastconv.conv2d's cache, whose key holds this module's current stride, padding,
        # dilation, groups, algo and activation: changing any of them replans.
        plan = _functional.plan(input, weight, bias, self.stride, padding, self.dilation,
                                self.groups, self.algo, self.activation)
        if plan.packing is not None and self._may_use_packed(input, weight, bias):
            return self._inference_forward(plan, input, weight, bias)
        return _functional.run(plan, input, weight, bias)

    # -- inference: packed weights where the algorithm has them ----------------------
    @staticmethod
    def _may_use_packed(input, weight, bias) -> bool:
        if torch.compiler.is_compiling():
            return False  # data pointers and version counters are not traceable
        if torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad or
                                        (bias is not None and bias.requires_grad)):
            return False  # the packed ops have no autograd: training uses the regular op
        return not weight.is_inference()  # inference tensors have no version counter

    def _inference_forward(self, plan, input, weight, bias):
        pack, forward_packed = plan.packing
        packed = self._packed_weight_for(plan.alg.name, pack, weight)
        x = input.unsqueeze(0) if plan.unbatched else input
        out = forward_packed(x, packed, list(weight.shape), bias, plan.stride, plan.padding,
                             plan.dilation, plan.groups, plan.activation)
        return out.squeeze(0) if plan.unbatched else out

    def _packed_weight_for(self, algo_name: str, pack, weight: torch.Tensor):
        key = (algo_name, weight._version, weight.data_ptr(), tuple(weight.shape),
               tuple(weight.stride()), weight.device, weight.dtype, self.groups)
        if self._packed_key != key:
            with torch.no_grad():
                self._packed_weight = pack(weight.detach(), self.groups)
            self._packed_key = key
            # Holding an alias keeps the weight's storage alive, so its address cannot
            # be reused by another tensor while this key is cached.
            self._packed_src = weight.detach()
        return self._packed_weight

    def invalidate_packed_weight(self) -> None:
        """Drop the cached packed weight (it is rebuilt on the next packed call)."""
        self._packed_weight = None
        self._packed_key = None
        self._packed_src = None

    @property
    def packed_weight_cached(self) -> bool:
        return self._packed_key is not None

    # -- keep the cache consistent with module operations ------------------------
    def _apply(self, fn, recurse=True):
        self.invalidate_packed_weight()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self.invalidate_packed_weight()
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        # torch.save / deepcopy / pickling: the cache is derived data, never saved.
        state = self.__dict__.copy()
        for name in CACHE_ATTRS:
            state[name] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("algo", "auto")
        self.__dict__.setdefault("activation", None)
        for name in CACHE_ATTRS:
            self.__dict__.setdefault(name, None)

    # -- cost ----------------------------------------------------------------------
    def output_shape(self, input_shape) -> tuple[int, ...]:
        """Output shape for an input of shape (N, C, H, W) or (C, H, W)."""
        *lead, c, h, w = input_shape
        if c != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected {self.in_channels} input channels, "
                             f"got input shape {tuple(input_shape)}")
        # nn.Conv2d keeps (left, right, top, bottom) for every padding form, 'same' included.
        left, right, top, bottom = self._reversed_padding_repeated_twice
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
        wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
        return (*lead, self.out_channels, ho, wo)

    def flops(self, input_shape) -> int:
        """2 * N * out_channels * Ho * Wo * (in_channels / groups) * kH * kW."""
        *lead, _, ho, wo = self.output_shape(input_shape)
        n = lead[0] if lead else 1
        kh, kw = self.kernel_size
        return 2 * n * self.out_channels * ho * wo * (self.in_channels // self.groups) * kh * kw

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.algo != "auto":
            s += f", algo={self.algo!r}"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s


# -- the classes convert() gives user subclasses -------------------------------------
# user class -> generated subclass of (Conv2d, user class); weak, so a class defined in a
# function can still be collected.
_CONVERTED: "weakref.WeakKeyDictionary[type, type]" = weakref.WeakKeyDictionary()


def converted_class(cls: type) -> type:
    """The class fastconv.convert gives a module of class `cls`.

    nn.Conv2d -> Conv2d. A subclass ``MyConv(nn.Conv2d)`` -> a subclass of both Conv2d and
    MyConv (Conv2d first, so its forward runs; MyConv's other methods and attributes stay
    and ``isinstance(m, MyConv)`` holds), generated once per class and named like it
    (module ``fastconv.nn.converted``). ``user_class`` maps it back."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Conv2d)):
        raise TypeError(f"converted_class: expected a subclass of torch.nn.Conv2d, got {cls!r}")
    if cls is nn.Conv2d or issubclass(cls, Conv2d):
        return Conv2d if cls is nn.Conv2d else cls
    gen = _CONVERTED.get(cls)
    if gen is None:
        gen = type(cls.__name__, (Conv2d, cls), {
            "__module__": "fastconv.nn.converted", "__qualname__": cls.__qualname__,
            "__doc__": f"{cls.__module__}.{cls.__qualname__} running on fastconv kernels "
                       "(made by fastconv.convert).",
            "_fastconv_user_class": cls, "__reduce_ex__": _reduce_converted})
        _CONVERTED[cls] = gen
    return gen


def user_class(cls: type) -> type:
    """The class a converted module had before convert (nn.Conv2d for Conv2d itself)."""
    return cls.__dict__.get("_fastconv_user_class", nn.Conv2d)


def _reduce_converted(self, protocol):
    # A generated class cannot be pickled by name; pickle the user's class (importable
    # wherever the model loads) and regenerate the subclass from it.
    _, _, *rest = object.__reduce_ex__(self, max(2, protocol))
    return (_new_converted, (type(self)._fastconv_user_class,), *rest)


def _new_converted(cls: type):
    gen = converted_class(cls)
    return gen.__new__(gen)
