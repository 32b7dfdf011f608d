"""Put fastconv into an existing model: convert, revert and fuse.

``convert`` swaps every torch.nn.Conv2d (subclasses too) for fastconv.nn.Conv2d by
changing the module's class in place: the module object, its Parameters, buffers,
hooks, training flag and state_dict keys all stay as they were. A user subclass
``MyConv(nn.Conv2d)`` becomes a generated subclass of both fastconv.nn.Conv2d and
``MyConv`` (one per class, cached), so ``isinstance(m, MyConv)`` and MyConv's methods
survive; ``revert`` gives the module back its exact class. It leaves alone what fastconv
cannot run, says why in a report (``model.fastconv_report``) and in one
``ConversionWarning`` per call.

``fuse`` prepares a model for inference: it folds each BatchNorm2d into the conv in
front of it and a following ReLU/ReLU6/SiLU/GELU module into the conv's epilogue.
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from . import functional, registry
from .nn.blocks import ChannelShuffle
from .nn.conv import CACHE_ATTRS, Conv2d as FastConv2d, check_algo, converted_class, user_class
from .spec import ConvSpec

Filter = Callable[[str, nn.Module], bool]

REPORT_ATTR = "fastconv_report"
# Older versions stored the class a module was converted from on the instance.
_ORIG_CLASS_ATTR = "_fastconv_orig_class"

logger = logging.getLogger("fastconv")


class ConversionWarning(UserWarning):
    """convert/fuse left some Conv2d modules unconverted (the report says which and why)."""

# Activation modules fuse() folds into a conv epilogue, by fastconv activation name.
def _activation_name(m: nn.Module) -> Optional[str]:
    if type(m) is nn.ReLU:
        return "relu"
    if type(m) is nn.ReLU6 or (type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val == 6.0):
        return "relu6"
    if type(m) is nn.SiLU:
        return "silu"
    if type(m) is nn.GELU and m.approximate == "none":
        return "gelu"
    return None


@dataclass
class ConversionReport:
    """What convert/revert/fuse did: (module name, detail) rows, printable."""

    action: str
    swapped: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    fused: list = field(default_factory=list)

    def __str__(self) -> str:
        head = f"fastconv.{self.action}: {len(self.swapped)} swapped, {len(self.skipped)} skipped"
        if self.action == "fuse":
            head += f", {len(self.fused)} fused"
        rows = [("swapped", *r) for r in self.swapped] + [("fused", *r) for r in self.fused] + \
               [("skipped", *r) for r in self.skipped]
        width = max([len(r[1]) for r in rows] + [4])
        return "\n".join([head] + [f"  {kind:8s} {name:{width}s}  {detail}" for kind, name, detail in rows])

    def __repr__(self) -> str:
        return (f"ConversionReport(action={self.action!r}, swapped={len(self.swapped)}, "
                f"skipped={len(self.skipped)}, fused={len(self.fused)})")


def _describe(m: nn.Conv2d) -> str:
    k = "x".join(map(str, m.kernel_size))
    s = f"{type(m).__name__}({m.in_channels}->{m.out_channels}, {k}, stride={m.stride[0]}"
    if m.groups != 1:
        s += f", groups={m.groups}"
    if m.dilation != (1, 1):
        s += f", dilation={m.dilation[0]}"
    if m.padding_mode != "zeros":
        s += f", {m.padding_mode}"
    return s + ")"


def module_spec(m: nn.Conv2d) -> ConvSpec:
    """A ConvSpec for this module's geometry, dtype and device (smallest valid input)."""
    w = m.weight
    k, cg, r, s = w.shape
    if m.padding_mode != "zeros":
        pad = (0, 0, 0, 0)  # padded explicitly before the kernel runs
    else:
        left, right, top, bottom = m._reversed_padding_repeated_twice
        pad = (top, bottom, left, right)
    h = m.dilation[0] * (r - 1) + 1
    wd = m.dilation[1] * (s - 1) + 1
    return ConvSpec(1, cg * m.groups, h, wd, k, r, s, tuple(m.stride), tuple(pad),
                    tuple(m.dilation), m.groups, w.dtype, "nchw", w.device.type, m.bias is not None)


def why_not_convertible(m: nn.Conv2d, algo: str = "auto") -> tuple[Optional[str], Optional[str]]:
    """(None, algorithm name) when fastconv can run this module, else (reason, None)."""
    if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
        return "lazy module with uninitialized parameters; convert after the first forward", None
    if torch.nn.utils.parametrize.is_parametrized(m):
        # Its class is a generated subclass whose properties compute the weight; swapping
        # the class would drop them.
        return ("parametrized (torch.nn.utils.parametrize); remove the parametrization "
                "(parametrize.remove_parametrizations) and convert"), None
    cls = type(m)
    if cls.forward is not nn.Conv2d.forward or cls._conv_forward is not nn.Conv2d._conv_forward:
        return (f"{cls.__name__} overrides forward/_conv_forward; converting would change what "
                "it computes"), None
    try:
        spec = module_spec(m)
        if not registry.algorithms(spec.device):
            return f"no fastconv algorithm is registered for device {spec.device!r}", None
        if spec.device == "cpu" and spec.dtype not in registry.dtypes("cpu"):
            return f"fastconv has no CPU kernels for {spec.dtype}", None
        alg = functional.select(spec, algo)
        reason = alg.why_not(spec)
    except ValueError as e:  # no such algorithm on this device, or it does not apply
        return str(e).replace("fastconv.conv2d: ", ""), None
    return reason, (alg.name if reason is None else None)


def _finish(model: nn.Module, report: ConversionReport) -> nn.Module:
    # object.__setattr__ would bypass Module bookkeeping; a plain attribute is what we want.
    model.__dict__[REPORT_ATTR] = report
    return model


def report(model: nn.Module) -> Optional[ConversionReport]:
    """The report left by the last convert/revert/fuse of `model`, or None."""
    return model.__dict__.get(REPORT_ATTR)


def convert(model: nn.Module, *, filter: Optional[Filter] = None, algo: str = "auto",
            inplace: bool = False) -> nn.Module:
    """Swap every torch.nn.Conv2d in `model` (subclasses too) for fastconv.nn.Conv2d.

    filter(name, module) -> bool picks which convs to convert (False leaves one alone).
    algo: "auto" or an algorithm name, set on every converted module.
    inplace: convert `model` itself (same module and Parameter objects); otherwise a
    deep copy is converted and returned.

    A plain nn.Conv2d becomes fastconv.nn.Conv2d; a subclass ``MyConv`` becomes a generated
    subclass of fastconv.nn.Conv2d and MyConv (``fastconv.nn.conv.converted_class``), so it is
    still a MyConv with MyConv's methods; ``revert`` restores the exact class. Skipped, with
    the reason in the report: lazy modules not yet initialized, subclasses that override
    forward, parametrized modules, and dtypes/devices/geometries no fastconv algorithm runs.
    The report is at ``model.fastconv_report`` (print it); skips other than ``filter``'s
    also raise one ``fastconv.ConversionWarning`` naming each module and reason, and every
    swap is logged at DEBUG level on the ``fastconv`` logger.
    """
    rep = _convert(model, filter, algo, inplace)
    _warn_skipped(report(rep), stacklevel=2)
    return rep


def _warn_skipped(rep: ConversionReport, stacklevel: int) -> None:
    """One warning for every module convert could not run (those the caller's filter
    excluded, or already fastconv, are the caller's choice: no warning). `stacklevel` as
    warnings.warn's, counted from the function calling this one."""
    bad = [(name, why) for name, why in rep.skipped
           if not why.endswith("excluded by filter") and not why.startswith("already fastconv")]
    if bad:
        listed = "; ".join(f"{name}: {why}" for name, why in bad)
        warnings.warn(f"fastconv.{rep.action}: {len(bad)} Conv2d module(s) left as they were: "
                      f"{listed}", ConversionWarning, stacklevel=stacklevel + 1)


def _convert(model: nn.Module, filter: Optional[Filter], algo: str, inplace: bool) -> nn.Module:
    check_algo(algo)
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.convert: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    rep = ConversionReport("convert")
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        qual = name or "(model)"
        if isinstance(m, FastConv2d):
            rep.skipped.append((qual, f"already fastconv ({_describe(m)}, algo={m.algo!r})"))
            continue
        if filter is not None and not filter(name, m):
            rep.skipped.append((qual, f"{_describe(m)}: excluded by filter"))
            continue
        reason, alg_name = why_not_convertible(m, algo)
        if reason is not None:
            rep.skipped.append((qual, f"{_describe(m)}: {reason}"))
            continue
        desc = _describe(m)
        m.__class__ = converted_class(type(m))
        m.algo = algo
        m.activation = None
        m.invalidate_packed_weight()
        w = m.weight
        rep.swapped.append((qual, f"{desc} {str(w.dtype).replace('torch.', '')} "
                                  f"{w.device.type}: algo={algo!r} -> {alg_name}"))
        logger.debug("fastconv.convert: %s %s", qual, rep.swapped[-1][1])
    for qual, why in rep.skipped:
        logger.debug("fastconv.convert: skipped %s: %s", qual, why)
    return _finish(model, rep)


def revert(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Undo convert: every fastconv.nn.Conv2d (blocks' convs too) becomes the class it was
    converted from, exactly (torch.nn.Conv2d for modules built as fastconv modules). Convs
    with a fused activation are left alone (fuse is one-way)."""
    if not inplace:
        model = copy.deepcopy(model)
    rep = ConversionReport("revert")
    for name, m in model.named_modules():
        if not isinstance(m, FastConv2d):
            continue
        qual = name or "(model)"
        if m.activation is not None:
            rep.skipped.append((qual, f"{_describe(m)}: has fused activation {m.activation!r}; "
                                      "fuse() is one-way"))
            continue
        cls = m.__dict__.pop(_ORIG_CLASS_ATTR, None) or user_class(type(m))
        if issubclass(cls, FastConv2d):
            cls = nn.Conv2d
        desc = _describe(m)
        for attr in ("algo", "activation", *CACHE_ATTRS):
            m.__dict__.pop(attr, None)
        m.__class__ = cls
        rep.swapped.append((qual, f"{desc} -> {cls.__module__}.{cls.__qualname__}"))
    return _finish(model, rep)


# ---------------------------------------------------------------------------------------
# fuse
# ---------------------------------------------------------------------------------------

def _foldable_bn(bn: nn.Module, conv: nn.Conv2d) -> bool:
    return (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and
            bn.running_mean is not None and bn.num_features == conv.out_channels)


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(.)) with bn's running statistics (inference semantics), through
    torch.nn.utils.fusion.fuse_conv_bn_weights (computed in float64, stored in the
    conv's dtype and memory format)."""
    w = conv.weight
    f64 = (lambda t: None if t is None else t.to(torch.float64))
    new_w, new_b = fuse_conv_bn_weights(f64(w), f64(conv.bias), f64(bn.running_mean),
                                        f64(bn.running_var), bn.eps, f64(bn.weight),
                                        f64(bn.bias))
    conv.weight = nn.Parameter(new_w.to(w.dtype).contiguous(memory_format=_mem_format(w)),
                               requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(new_b.to(w.dtype), requires_grad=w.requires_grad)
    if isinstance(conv, FastConv2d):
        conv.invalidate_packed_weight()


def _mem_format(t: torch.Tensor):
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _set_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


class _Tracer(torch.fx.Tracer):
    """Keeps convs, norms, activations and ChannelShuffle opaque (fastconv modules are
    not under torch.nn, so the default tracer would trace into them)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, ChannelShuffle)):
            return True
        return super().is_leaf_module(m, qualname)


class _Fuser:
    def __init__(self, model: nn.Module, rep: ConversionReport):
        self.rep = rep
        # A module reachable under two names (shared) is never rewritten.
        counts: dict[int, int] = {}
        self.names: dict[int, str] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            counts[id(m)] = counts.get(id(m), 0) + 1
            self.names.setdefault(id(m), name or "(model)")
        self.shared = {i for i, c in counts.items() if c > 1}

    def fold(self, root, conv, conv_t, bn=None, bn_t=None, act=None, act_t=None) -> None:
        parts, done = [self.names[id(conv)]], []
        if bn is not None:
            fold_batchnorm(conv, bn)
            _set_submodule(root, bn_t, nn.Identity())
            parts.append(self.names[id(bn)])
            done.append("BatchNorm folded")
        if act is not None:
            conv.activation = _activation_name(act)
            _set_submodule(root, act_t, nn.Identity())
            parts.append(self.names[id(act)])
            done.append(f"{conv.activation} fused into the epilogue")
        self.rep.fused.append((" + ".join(parts), ", ".join(done)))

    def run(self, module: nn.Module) -> None:
        try:
            graph = _Tracer().trace(module)
        except Exception:  # data-dependent control flow etc.: fuse what is visible locally
            if isinstance(module, nn.Sequential):
                self.sequential(module)
            for child in list(module.children()):
                self.run(child)
            return
        self.graph(module, graph)

    def _ok(self, m) -> bool:
        return id(m) not in self.shared

    def graph(self, root: nn.Module, graph: torch.fx.Graph) -> None:
        calls: dict[str, int] = {}
        for n in graph.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1

        def single_module_user(node, kinds):
            users = list(node.users)
            if len(users) != 1 or users[0].op != "call_module" or calls[users[0].target] != 1:
                return None, None
            u = users[0]
            if len(u.args) != 1 or u.kwargs or u.args[0] is not node:
                return None, None
            m = root.get_submodule(u.target)
            return (m, u) if isinstance(m, kinds) and self._ok(m) else (None, None)

        for n in list(graph.nodes):
            if n.op != "call_module" or calls[n.target] != 1:
                continue
            conv = root.get_submodule(n.target)
            if not isinstance(conv, nn.Conv2d) or not self._ok(conv):
                continue
            if isinstance(conv, FastConv2d) and conv.activation is not None:
                continue
            bn, bn_node = single_module_user(n, nn.BatchNorm2d)
            if bn is not None and not _foldable_bn(bn, conv):
                bn = None
            last = bn_node if bn is not None else n
            act, act_node = (None, None)
            if isinstance(conv, FastConv2d):
                act, act_node = single_module_user(last, nn.Module)
                if act is not None and _activation_name(act) is None:
                    act = None
            if bn is None and act is None:
                continue
            self.fold(root, conv, n.target, bn, bn_node.target if bn is not None else None,
                      act, act_node.target if act is not None else None)

    def sequential(self, seq: nn.Sequential) -> None:
        names = list(seq._modules)
        i = 0
        while i < len(names):
            conv = seq._modules[names[i]]
            if not isinstance(conv, nn.Conv2d) or not self._ok(conv) or \
                    (isinstance(conv, FastConv2d) and conv.activation is not None):
                i += 1
                continue
            j = i + 1
            bn = seq._modules[names[j]] if j < len(names) else None
            bn_t = names[j] if bn is not None else None
            if bn is None or not _foldable_bn(bn, conv) or not self._ok(bn):
                bn, bn_t = None, None
            else:
                j += 1
            act = seq._modules[names[j]] if j < len(names) else None
            act_t = names[j] if act is not None else None
            if act is None or not isinstance(conv, FastConv2d) or _activation_name(act) is None \
                    or not self._ok(act):
                act, act_t = None, None
            else:
                j += 1
            if bn is not None or act is not None:
                self.fold(seq, conv, names[i], bn, bn_t, act, act_t)
            i = j


def fuse(model: nn.Module, *, filter: Optional[Filter] = None, algo: str = "auto",
         inplace: bool = False) -> nn.Module:
    """Convert `model` (``filter``, ``algo`` as in convert) and fold it for inference
    (it must be in eval mode).

    Recognized patterns (a module is rewritten only when each piece is called exactly
    once and the conv's output feeds only the next piece):
      Conv2d -> BatchNorm2d            the BN (running statistics) is folded into the
                                       conv's weight and bias, the BN becomes Identity
      Conv2d [-> BatchNorm2d] -> Act   Act in ReLU, ReLU6 (or Hardtanh(0, 6)), SiLU,
                                       GELU(approximate='none') becomes the conv's
                                       fused ``activation=`` and the module Identity
    They are found by tracing each module's forward with torch.fx (so ResNet-style
    blocks calling self.conv1/self.bn1 are covered), falling back, for modules that
    cannot be traced, to adjacent children of nn.Sequential (torchvision's
    Conv2dNormActivation, MobileNet/EfficientNet stages). Not folded: activations
    called as functions (F.relu) or modules called more than once (ResNet's shared
    self.relu), BN without running statistics, and activations after convs that
    convert() skipped (their BN is still folded).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.fuse: expected an nn.Module, got {type(model).__name__}")
    training = [name or "(model)" for name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if training:
        raise ValueError("fastconv.fuse folds BatchNorm running statistics and is for inference; "
                         f"call model.eval() first ({', '.join(training[:3])} in training mode)")
    if not inplace:
        model = copy.deepcopy(model)
    conv_rep = report(_convert(model, filter, algo, inplace=True))
    rep = ConversionReport("fuse", swapped=conv_rep.swapped, skipped=conv_rep.skipped)
    _warn_skipped(rep, stacklevel=2)
    _Fuser(model, rep).run(model)
    return _finish(model, rep)


__all__ = ["convert", "revert", "fuse", "report", "ConversionReport", "ConversionWarning",
           "fold_batchnorm",
           "why_not_convertible"]
