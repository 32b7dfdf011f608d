"""Shared test utilities: random conv problems and comparison against F.conv2d."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import fastconv

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def cpu_algos(spec=None):
    """Public CPU algorithms (plus the reference), optionally those applicable to `spec`."""
    algos = [a for a in fastconv.registry.algorithms("cpu", include_internal=True)
             if "cpu" in a.devices]
    if spec is not None:
        algos = [a for a in algos if a.why_not(spec) is None]
    return [a.name for a in algos]


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_against_torch(x, w, b, *, algo, stride=1, padding=0, dilation=1, groups=1,
                        activation=None, grads=True, tol=None):
    """Forward and all grads of fastconv.conv2d vs F.conv2d (+ activation) with the same inputs."""
    tol = tol or TOL[x.dtype]
    leaves = [t.detach().clone().requires_grad_(grads) if t is not None else None for t in (x, w, b)]
    ref_leaves = [t.detach().clone().requires_grad_(grads) if t is not None else None for t in (x, w, b)]
    out = fastconv.conv2d(*leaves, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          algo=algo, activation=activation)
    ref = F.conv2d(*ref_leaves, stride=stride, padding=padding, dilation=dilation, groups=groups)
    ref = fastconv._ops.apply_activation(ref, activation or "none")
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert not out.isnan().any(), "NaN in output (unwritten elements?)"
    torch.testing.assert_close(out, ref, **tol)
    # Memory format is meaningless for empty outputs (PyTorch's own choice there varies by path).
    if out.dim() == 4 and min(out.shape[1:]) > 1 and out.numel() > 0:
        cl = torch.channels_last
        assert out.is_contiguous(memory_format=cl) == ref.is_contiguous(memory_format=cl), \
            "output memory format differs from F.conv2d's"
    if not grads or out.numel() == 0:
        return out
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    for name, a, r in zip(("input", "weight", "bias"), leaves, ref_leaves):
        if a is None:
            continue
        assert a.grad is not None, f"no grad for {name}"
        assert not a.grad.isnan().any(), f"NaN in grad of {name}"
        torch.testing.assert_close(a.grad, r.grad, **tol, msg=lambda m: f"grad {name}: {m}")
    return out


# The CPU kernels' instruction-set paths this machine can run, best first
# (fastconv._C.cpu_isa_supported(); tests force each with set_max_isa).
_ISA_ORDER = ("avx512", "avx2", "portable")
SUPPORTED_ISAS = _ISA_ORDER[_ISA_ORDER.index(fastconv._C.cpu_isa_supported()):]


class isa_path:
    """Context manager: run the CPU kernels on `isa` (skips the test if this CPU lacks it)."""

    def __init__(self, isa: str):
        self.isa = isa

    def __enter__(self):
        import pytest

        if self.isa not in SUPPORTED_ISAS:
            pytest.skip(f"CPU has no {self.isa} (supports {', '.join(SUPPORTED_ISAS)})")
        self.before = fastconv._C.cpu_isa()
        fastconv._C.set_max_isa(self.isa)
        return self

    def __exit__(self, *exc):
        fastconv._C.set_max_isa(self.before)
        return False
