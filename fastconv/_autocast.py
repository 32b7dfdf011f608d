"""Autocast for fastconv's ops: the rule torch.nn.functional.conv2d follows, registered per op.

Under ``torch.autocast`` F.conv2d is a "lower precision" op: its floating inputs are cast to
the autocast dtype (float64 tensors are left alone, as autocast leaves them) and so is its
result. fastconv registers that rule for every algorithm's forward op
(``torch.ops.fastconv.<op>_conv2d``) at the op's Autocast dispatch key:

- CUDA: floating inputs are cast to the autocast dtype (float16 or bfloat16; the Triton
  kernels run both) and the conv runs in it, as cuDNN's does.
- CPU: fastconv's C++ kernels run float32 and float64 only. The inputs are cast to float32
  (a bfloat16 input or weight becomes float32 exactly), the conv runs in float32 and its
  result is rounded once to the autocast dtype, which is the dtype F.conv2d returns. So
  under CPU autocast fastconv returns bfloat16 like F.conv2d, computed at float32 accuracy
  and float32 speed (no bfloat16 kernels).

``torch.library.register_autocast(op, device, dtype)`` casts to one dtype fixed at
registration and never casts the result, which fits neither rule (CUDA autocast may be
float16 or bfloat16; the CPU rule rounds the result). ``register`` below does what it does,
a kernel at the Autocast<Device> key plus the same kernel for the Python dispatcher (what
torch.compile traces through), with the dtype read from ``torch.get_autocast_dtype`` at
call time.

``fastconv.conv2d`` and ``fastconv.nn.Conv2d`` validate their arguments as the op will see
them (``cast_args``) and then call the op, whose autocast kernel casts the result.
"""
from __future__ import annotations

import torch

from . import registry

CPU_DTYPES = (torch.float32, torch.float64)

_LIB = torch.library.Library("fastconv", "IMPL")
_REGISTERED: set = set()  # (op qualname, device type)


def compute_dtype(device_type: str, autocast_dtype: torch.dtype) -> torch.dtype:
    """The dtype the conv runs in under autocast to `autocast_dtype` on `device_type`."""
    if device_type == "cpu" and autocast_dtype not in CPU_DTYPES:
        return torch.float32
    return autocast_dtype


def _eligible(t) -> bool:
    # Autocast's own rule (cached_cast): floating tensors, float64 excepted.
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def cast_args(args, device_type: str):
    """(args with autocast-eligible tensors cast to the compute dtype, the dtype the result
    must be cast to or None)."""
    want = torch.get_autocast_dtype(device_type)
    run = compute_dtype(device_type, want)
    if not any(_eligible(a) for a in args):
        return tuple(args), None
    out = tuple(a.to(run) if _eligible(a) and a.dtype != run else a for a in args)
    return out, (want if run != want else None)


def register(qualname: str, device_type: str) -> None:
    """Register the autocast rule for the op `qualname` ("fastconv::<op>_conv2d")."""
    if (qualname, device_type) in _REGISTERED:
        return
    op = torch._library.utils.lookup_op(qualname)
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)
    exclude = torch._C.DispatchKeySet(key)

    def kernel(*args, **kwargs):
        args, result_dtype = cast_args(args, device_type)
        with torch._C._ExcludeDispatchKeyGuard(exclude):
            out = op(*args, **kwargs)
        return out if result_dtype is None else out.to(result_dtype)

    if key in op.py_kernels:
        op.py_kernels.pop(key)
    op.py_impl(key)(kernel)
    _LIB.impl(qualname.split("::", 1)[1], lambda _keyset, *a, **k: kernel(*a, **k), key_name,
              with_keyset=True)
    _REGISTERED.add((qualname, device_type))


def register_all() -> None:
    """The rule for every registered algorithm's forward op, on each device it runs on."""
    for alg in registry.algorithms(include_internal=True):
        for device in alg.devices:
            if device in ("cpu", "cuda") and torch._C._is_autocast_available(device):
                register(f"fastconv::{alg.op}_conv2d", device)


def conv2d(input, weight, bias, stride, padding, dilation, groups, algo, activation):
    """fastconv.conv2d under autocast: plan with the arguments the op's autocast kernel will
    pass on, then call the op (not the eager path), whose autocast kernel casts the result."""
    from . import functional

    (input, weight, bias), _ = cast_args((input, weight, bias), input.device.type)
    p = functional.plan(input, weight, bias, stride, padding, dilation, groups, algo, activation)
    x = input.unsqueeze(0) if p.unbatched else input
    out = p.op(x, weight, bias, p.stride, p.padding, p.dilation, p.groups, p.activation)
    return out.squeeze(0) if p.unbatched else out
