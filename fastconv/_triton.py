"""The Triton algorithms (kernels/), registered when triton can be imported.

Each family gets the three ops of the C++ families with exactly their schemas
(csrc/fastconv.cpp), defined here through torch.library, with a CUDA kernel and a
CPU kernel. The CPU kernel is the same Triton code and runs only under Triton's
interpreter (TRITON_INTERPRET=1, used by CI); elsewhere it raises.

The kernel modules are imported on first use, not here: Triton decides at
decoration time whether a kernel is interpreted, so importing them lazily lets a
process set TRITON_INTERPRET after `import fastconv`.
"""
from __future__ import annotations

import importlib

import torch

from ._ops import register_family
from .registry import Algorithm, register, triton_interpret
from .spec import ConvSpec

try:
    import triton  # noqa: F401
except ImportError:  # CPU-only installs without triton
    triton = None

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

_SCHEMAS = (
    "{op}_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
    "int[2] dilation, int groups, str activation=\"none\") -> Tensor",
    "{op}_conv2d_grad_input(Tensor grad_output, Tensor weight, int[4] input_size, "
    "int[2] stride, int[4] padding, int[2] dilation, int groups) -> Tensor",
    "{op}_conv2d_grad_weight(Tensor grad_output, Tensor input, int[4] weight_size, "
    "int[2] stride, int[4] padding, int[2] dilation, int groups) -> Tensor",
)
_FAMILIES = {"triton_igemm": "igemm", "triton_depthwise": "depthwise",
             "triton_grouped": "grouped"}
_LIB = None  # keeps the torch.library fragment alive


_MODULES: dict = {}


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


_IMPLS: dict = {}  # (op, device type) -> the three Python kernels registered for it


def _define_ops() -> None:
    global _LIB
    _LIB = torch.library.Library("fastconv", "FRAGMENT")
    for op, module in _FAMILIES.items():
        for schema in _SCHEMAS:
            _LIB.define(schema.format(op=op))
        names = (f"{op}_conv2d", f"{op}_conv2d_grad_input", f"{op}_conv2d_grad_weight")
        for key, cpu in (("CUDA", False), ("CPU", True)):
            impls = _IMPLS[op, key.lower()] = _impls(op, module, cpu)
            for name, fn in zip(names, impls):
                _LIB.impl(name, fn, key)
        register_family(op, fake=True)


def _eager_kernels(op: str):
    """The kernels the ops dispatch to, for fastconv's eager path (see registry.Algorithm).
    On CUDA the kernel module's own functions (one call less); on the CPU the registered
    impls, which keep the interpreter check."""
    def kernels(device_type: str):
        if device_type == "cuda":
            mod = _kernels(_FAMILIES[op])
            return mod.conv2d, mod.conv2d_grad_input, mod.conv2d_grad_weight
        return _IMPLS.get((op, device_type))
    return kernels


def _depthwise_only(spec: ConvSpec):
    if spec.is_depthwise:
        return None
    return (f"algo='triton_depthwise' needs groups == in_channels (depthwise, any channel "
            f"multiplier); this conv has in_channels={spec.C}, out_channels={spec.K}, "
            f"groups={spec.groups}")


# kernels/grouped.py's MAX_GROUP_WIDTH, repeated so that the registry need not import the
# kernel module (and with it triton.jit) to answer "does it apply".
GROUPED_MAX_WIDTH = 64


def _grouped_only(spec: ConvSpec):
    if spec.groups > 1 and spec.Cg <= GROUPED_MAX_WIDTH and spec.Kg <= GROUPED_MAX_WIDTH:
        return None
    return (f"algo='triton_grouped' needs groups > 1 with at most {GROUPED_MAX_WIDTH} input and "
            f"output channels per group; this conv has groups={spec.groups}, "
            f"{spec.Cg} in / {spec.Kg} out per group")


if triton is not None:
    _define_ops()
    register(Algorithm(
        name="triton_igemm", op="triton_igemm", devices=("cuda",), interpreted_devices=("cpu",),
        dtypes=DTYPES, eager_kernels=_eager_kernels("triton_igemm"),
        summary="implicit GEMM in Triton (no im2col buffer; TMA descriptors for 1x1 channels_last), tensor-core tl.dot with fp32 "
                "accumulation for fp32 (TF32 iff cudnn.allow_tf32)/fp16/bf16; fp64 via a "
                "non-dot multiply-sum path; fused bias+activation; tiles tuned per shape and "
                "cached on disk",
        constraints="any conv2d (stride, padding, dilation, groups, both layouts)"))
    register(Algorithm(
        name="triton_depthwise", op="triton_depthwise", devices=("cuda",),
        interpreted_devices=("cpu",), dtypes=DTYPES, eager_kernels=_eager_kernels("triton_depthwise"),
        summary="direct depthwise in Triton, a pixel x channel tile per program looping over "
                "the taps (1x1..31x31); fp32 accumulation (fp64 for fp64); fused bias+activation",
        constraints="groups == in_channels, any channel multiplier", applicable=_depthwise_only))
    register(Algorithm(
        name="triton_grouped", op="triton_grouped", devices=("cuda",),
        interpreted_devices=("cpu",), dtypes=DTYPES, eager_kernels=_eager_kernels("triton_grouped"),
        summary="grouped conv with few channels per group in Triton: per tap one contiguous "
                "[pixels, GPT*Cg] tile times a block-diagonal [GPT*Cg, GPT*Kg] weight on the "
                "tensor cores (GPT groups per program, >= 16 wide); fp64 on a CUDA-core "
                "direct tile; fp32 accumulation; fused bias+activation; grad_input per "
                "stride phase; tiles tuned per shape",
        constraints=f"groups > 1, at most {GROUPED_MAX_WIDTH} channels per group in and out",
        applicable=_grouped_only))
