"""The one place an algorithm plugs in.

Each Algorithm names its ops (torch.ops.fastconv.<op>_conv2d, _grad_input,
_grad_weight), the devices and dtypes it runs on, when it applies, and later a
cost model. Dispatch (`fastconv.conv2d`), `fastconv bench` and
`fastconv explain` all read this registry; nothing else lists algorithms.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .spec import ConvSpec

# Returns None when the algorithm applies to the spec, else the reason it doesn't.
Applicability = Callable[[ConvSpec], Optional[str]]


def triton_interpret() -> bool:
    """Triton's interpreter runs Triton kernels on CPU tensors (used by CI)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class Algorithm:
    name: str
    op: str  # op prefix: torch.ops.fastconv.<op>_conv2d and its two gradients
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    summary: str
    constraints: str
    applicable: Applicability = lambda spec: None
    # Included in algo="auto" and in benchmarks by default.
    public: bool = True
    # Devices that only work in a special mode (Triton on CPU under TRITON_INTERPRET=1).
    interpreted_devices: tuple[str, ...] = ()
    # spec -> modelled bytes per memory level (fastconv explain), given by the module that
    # registers the algorithm; None where there is no model.
    cost_model: Optional[Callable] = field(default=None, compare=False)
    # Optional "prepare weight" step for inference (fastconv.nn.Conv2d caches the result):
    # pack_weight(weight, groups) -> packed, and forward_packed(input, packed, weight_size, bias,
    # stride, padding[4], dilation, groups, activation) -> output. No autograd needed.
    pack_weight: Optional[Callable] = field(default=None, compare=False)
    forward_packed: Optional[Callable] = field(default=None, compare=False)
    # Optional spec -> bool: whether the packed path serves this conv (None: every conv
    # the algorithm runs). im2col packs only the 1x1 layers its own GEMM runs.
    packs: Optional[Callable] = field(default=None, compare=False)
    # Optional eager kernels: eager_kernels(device_type) -> (forward, grad_input, grad_weight),
    # Python callables with the three ops' signatures that fastconv.conv2d may call without
    # the dispatcher where nothing could tell the difference (fastconv/_eager.py), or None.
    # A fourth, train(x, w, bias, stride, padding, dilation, groups, ops) -> output with its
    # autograd attached or None, takes calls that need a gradient first.
    # Families whose ops are C++ leave it None: their dispatch is already cheap.
    eager_kernels: Optional[Callable] = field(default=None, compare=False)

    @property
    def forward(self):
        return getattr(torch.ops.fastconv, f"{self.op}_conv2d")

    @property
    def grad_input(self):
        return getattr(torch.ops.fastconv, f"{self.op}_conv2d_grad_input")

    @property
    def grad_weight(self):
        return getattr(torch.ops.fastconv, f"{self.op}_conv2d_grad_weight")

    @property
    def packing(self):
        """(pack_weight, forward_packed), or None when this algorithm has no packed path.

        Without explicit fields, ops named <op>_pack_weight and <op>_conv2d_packed
        are used when the extension provides them."""
        if self.pack_weight is not None and self.forward_packed is not None:
            return self.pack_weight, self.forward_packed
        if self.op not in _PACKED_OPS:  # looked up once: a failed torch.ops lookup is slow
            ns = torch.ops.fastconv
            names = (f"{self.op}_pack_weight", f"{self.op}_conv2d_packed")
            _PACKED_OPS[self.op] = (tuple(getattr(ns, n) for n in names)
                                    if all(hasattr(ns, n) for n in names) else None)
        return _PACKED_OPS[self.op]

    def runs_on(self, device: str) -> bool:
        if device in self.devices:
            return True
        return device in self.interpreted_devices and triton_interpret()

    def why_not(self, spec: ConvSpec) -> Optional[str]:
        """None if this algorithm can run `spec`, else a sentence saying why not."""
        if not self.runs_on(spec.device):
            where = ", ".join(self.devices)
            extra = (f" ({', '.join(self.interpreted_devices)} only with TRITON_INTERPRET=1)"
                     if self.interpreted_devices else "")
            return f"algo={self.name!r} runs on {where}{extra}, not on {spec.device}"
        if spec.dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"algo={self.name!r} supports dtypes {names}, not {str(spec.dtype).replace('torch.', '')}"
        return self.applicable(spec)

    def __str__(self) -> str:
        return f"{self.name:18s} [{', '.join(self.devices)}] {self.summary}. Applies: {self.constraints}"


_REGISTRY: dict[str, Algorithm] = {}
_PACKED_OPS: dict[str, Optional[tuple]] = {}  # op prefix -> (pack, forward_packed) or None


def register(algo: Algorithm, *, replace: bool = False) -> Algorithm:
    """Add `algo` (replace=True: in place of the one registered under its name)."""
    if algo.name in _REGISTRY and not replace:
        raise ValueError(f"algorithm {algo.name!r} is already registered")
    _REGISTRY[algo.name] = algo
    return algo


def unregister(name: str) -> Optional[Algorithm]:
    """Remove the algorithm registered as `name` (tests); returns it, or None."""
    return _REGISTRY.pop(name, None)


def is_registered(algo: Algorithm) -> bool:
    """True while `algo` itself (not a replacement) is the one registered under its name."""
    return _REGISTRY.get(algo.name) is algo


def dtypes(device: Optional[str] = None) -> tuple:
    """The dtypes some registered algorithm runs on `device` (in the current mode: the
    interpreted Triton algorithms count on the CPU under TRITON_INTERPRET=1); device None:
    on any device."""
    out = []
    for algo in algorithms(device, include_internal=True):
        out += [d for d in algo.dtypes if d not in out]
    return tuple(out)


def get(name: str) -> Algorithm:
    if name not in _REGISTRY:
        known = ", ".join(["auto", *_REGISTRY])
        raise ValueError(f"unknown algo {name!r}; expected one of: {known}")
    return _REGISTRY[name]


def algorithms(device: Optional[str] = None, *, include_internal: bool = False) -> list[Algorithm]:
    """Registered algorithms, optionally only those that run on `device`."""
    out = [a for a in _REGISTRY.values() if include_internal or a.public]
    if device is not None:
        out = [a for a in out if a.runs_on(device)]
    return out


def applicable(spec: ConvSpec) -> list[Algorithm]:
    return [a for a in algorithms(spec.device) if a.why_not(spec) is None]


def choose(spec: ConvSpec) -> Algorithm:
    """The algo="auto" heuristic. Documented in the README; keep the two in step.

    CPU: depthwise shapes (groups == C_in) go to `depthwise`; 1x1 stride-1 convs are
    a plain GEMM and go to `im2col` (no column copy is made); other grouped convs go to
    `direct`; other dense convs to `direct` or `im2col` by layer and ISA
    (fastconv/_heuristics.py, with the measurements).
    CUDA: depthwise shapes go to `triton_depthwise`; other grouped convs with few channels
    per group to `triton_grouped` (fastconv/_heuristics.py); everything else to `triton_igemm`.
    """
    if spec.device == "cuda":
        if spec.is_depthwise:
            return get("triton_depthwise")
        from . import _heuristics

        return get(_heuristics.cuda_grouped_choice(spec))
    if spec.is_depthwise:
        return get("depthwise")
    if spec.R == 1 and spec.S == 1 and spec.stride == (1, 1):
        return get("im2col")
    from . import _heuristics

    return get(_heuristics.cpu_dense_choice(spec))

