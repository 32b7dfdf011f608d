"""The Triton algorithms (kernels/), registered when triton can be imported.

A Triton family is a kernel module `fastconv.kernels.<module>` with the three entry
points conv2d, conv2d_grad_input, conv2d_grad_weight (kernels/_plan.Family gives them).
`register_triton_family` makes it an algorithm: its three ops with the C++ families'
schemas, a CUDA kernel and a CPU kernel for each, fake kernels, autograd and FLOP
formulas (_ops.register_family), and its registry entry. The CPU kernel is the same
Triton code and runs only under Triton's interpreter (TRITON_INTERPRET=1, used by CI);
elsewhere it raises.

The kernel modules are imported on first use, not here: Triton decides at
decoration time whether a kernel is interpreted, so importing them lazily lets a
process set TRITON_INTERPRET after `import fastconv`.
"""
from __future__ import annotations

import importlib

import torch

from . import _C  # noqa: F401  (defines the C++ families' ops, whose schemas these share)
from ._ops import register_family
from .kernels import GROUPED_MAX_GROUP_WIDTH
from .registry import Algorithm, register, triton_interpret
from .spec import ConvSpec

try:
    import triton  # noqa: F401
except ImportError:  # CPU-only installs without triton
    triton = None

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
OP_SUFFIXES = ("_conv2d", "_conv2d_grad_input", "_conv2d_grad_weight")
_LIB = None  # the torch.library fragment (kept alive)
_MODULES: dict = {}
_IMPLS: dict = {}  # (op, device type) -> the three Python kernels registered for it


def schemas(op: str) -> list[str]:
    """The three op schemas of family `op`: csrc/fastconv.cpp's (FASTCONV_DEFINE_ALGO, the
    one source), read from the registered reference ops and renamed."""
    out = []
    for suffix in OP_SUFFIXES:
        schema = str(getattr(torch.ops.fastconv, "reference" + suffix).default._schema)
        out.append(schema.replace("fastconv::reference", op, 1))
    return out


def _kernels(module: str):
    mod = _MODULES.get(module)
    if mod is None:  # import_module costs a microsecond or two a call: look it up once
        mod = _MODULES[module] = importlib.import_module(f"fastconv.kernels.{module}")
    return mod


def _cpu_guard(op: str) -> None:
    if not triton_interpret():
        raise RuntimeError(f"fastconv.{op}: Triton kernels run on CUDA tensors; on the CPU they "
                           "run only under Triton's interpreter (set TRITON_INTERPRET=1 before "
                           "starting Python)")


def _impls(op: str, module: str, cpu: bool):
    """The three Python kernels of a family; the CPU ones check for the interpreter."""

    def fwd(input, weight, bias, stride, padding, dilation, groups, activation="none"):
        if cpu:
            _cpu_guard(f"{op}_conv2d")
        return _kernels(module).conv2d(input, weight, bias, stride, padding, dilation, groups,
                                       activation)

    def gin(grad_output, weight, input_size, stride, padding, dilation, groups):
        if cpu:
            _cpu_guard(f"{op}_conv2d_grad_input")
        return _kernels(module).conv2d_grad_input(grad_output, weight, input_size, stride,
                                                  padding, dilation, groups)

    def gw(grad_output, input, weight_size, stride, padding, dilation, groups):
        if cpu:
            _cpu_guard(f"{op}_conv2d_grad_weight")
        return _kernels(module).conv2d_grad_weight(grad_output, input, weight_size, stride,
                                                   padding, dilation, groups)

    return fwd, gin, gw


def _eager_kernels(op: str, module: str):
    """The kernels the ops dispatch to, for fastconv's eager path (see registry.Algorithm).
    On CUDA the kernel module's own functions (one call less) and the family's training call
    with its autograd in C++ (_plan.Family.conv2d_train); on the CPU the registered impls,
    which keep the interpreter check."""
    def kernels(device_type: str):
        if device_type == "cuda":
            mod = _kernels(module)
            return (mod.conv2d, mod.conv2d_grad_input, mod.conv2d_grad_weight,
                    mod.FAMILY.conv2d_train)
        return _IMPLS.get((op, device_type))
    return kernels


def register_triton_family(name: str, module: str, summary: str, constraints: str,
                           applicable=None) -> Algorithm:
    """Make fastconv.kernels.<module> the algorithm `name` (ops fastconv::<name>_conv2d,
    _grad_input, _grad_weight): the one call a new Triton family needs."""
    global _LIB
    if _LIB is None:
        _LIB = torch.library.Library("fastconv", "FRAGMENT")
    for schema in schemas(name):
        _LIB.define(schema)
    for key, cpu in (("CUDA", False), ("CPU", True)):
        impls = _IMPLS[name, key.lower()] = _impls(name, module, cpu)
        for suffix, fn in zip(OP_SUFFIXES, impls):
            _LIB.impl(name + suffix, fn, key)
    register_family(name, fake=True)
    extra = {} if applicable is None else {"applicable": applicable}
    return register(Algorithm(
        name=name, op=name, devices=("cuda",), interpreted_devices=("cpu",), dtypes=DTYPES,
        eager_kernels=_eager_kernels(name, module), summary=summary, constraints=constraints,
        **extra))


def _depthwise_only(spec: ConvSpec):
    if spec.is_depthwise:
        return None
    return (f"algo='triton_depthwise' needs groups == in_channels (depthwise, any channel "
            f"multiplier); this conv has in_channels={spec.C}, out_channels={spec.K}, "
            f"groups={spec.groups}")


def _grouped_only(spec: ConvSpec):
    width = GROUPED_MAX_GROUP_WIDTH
    if spec.groups > 1 and spec.Cg <= width and spec.Kg <= width:
        return None
    return (f"algo='triton_grouped' needs groups > 1 with at most {width} input and "
            f"output channels per group; this conv has groups={spec.groups}, "
            f"{spec.Cg} in / {spec.Kg} out per group")


if triton is not None:
    register_triton_family(
        "triton_igemm", "igemm",
        summary="implicit GEMM in Triton (no im2col buffer; TMA descriptors for 1x1 "
                "channels_last), tensor-core tl.dot with fp32 accumulation for fp32 (TF32 iff "
                "cudnn.allow_tf32)/fp16/bf16; fp64 via a non-dot multiply-sum path; fused "
                "bias+activation; tiles tuned per shape and cached on disk",
        constraints="any conv2d (stride, padding, dilation, groups, both layouts)")
    register_triton_family(
        "triton_depthwise", "depthwise",
        summary="direct depthwise in Triton, a pixel x channel tile per program looping over "
                "the taps (1x1..31x31); fp32 accumulation (fp64 for fp64); fused bias+activation",
        constraints="groups == in_channels, any channel multiplier", applicable=_depthwise_only)
    register_triton_family(
        "triton_grouped", "grouped",
        summary="grouped conv with few channels per group in Triton: per tap one contiguous "
                "[pixels, GPT*Cg] tile times a block-diagonal [GPT*Cg, GPT*Kg] weight on the "
                "tensor cores (GPT groups per program, >= 16 wide); fp64 on a CUDA-core "
                "direct tile; fp32 accumulation; fused bias+activation; grad_input per "
                "stride phase; tiles tuned per shape",
        constraints=f"groups > 1, at most {GROUPED_MAX_GROUP_WIDTH} channels per group in and out",
        applicable=_grouped_only)
