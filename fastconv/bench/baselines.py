"""What each layer is timed with: fastconv's algorithms and the PyTorch baselines.

Each is a function of (input, weight); `candidate` turns it into the zero-argument callable the timer
runs: one forward (or forward+backward) on the next input of a rotating pool of fresh random tensors.
The weight stays fixed across calls, as in inference.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..registry import Algorithm
from ..spec import ConvSpec
from .timing import Rotating

# Inputs rotated through per candidate: enough that consecutive calls read different memory.
ROTATE = 3


def _memory_format(spec: ConvSpec):
    return torch.channels_last if spec.layout == "nhwc" else torch.contiguous_format


def make_inputs(spec: ConvSpec, n: int = ROTATE, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`n` fresh random inputs and one weight, in the spec's dtype, layout and device."""
    g = torch.Generator().manual_seed(seed)
    mf = _memory_format(spec)

    def rnd(shape):
        t = torch.randn(shape, generator=g, dtype=torch.float32)
        return t.to(device=spec.device, dtype=spec.dtype).contiguous(memory_format=mf)

    xs = [rnd(spec.input_shape) for _ in range(n)]
    # Scale like a real init so fp16 outputs stay in range.
    w = rnd(spec.weight_shape) / (spec.Cg * spec.R * spec.S) ** 0.5
    return xs, w


def _sym_padding(spec: ConvSpec) -> Optional[tuple[int, int]]:
    t, b, l, r = spec.padding
    return (t, l) if (t == b and l == r) else None


def torch_conv_fn(spec: ConvSpec) -> Callable:
    """F.conv2d with the spec's geometry (asymmetric padding via F.pad first, as PyTorch does for 'same')."""
    pad = _sym_padding(spec)
    if pad is not None:
        return lambda x, w: F.conv2d(x, w, None, spec.stride, pad, spec.dilation, spec.groups)
    t, b, l, r = spec.padding
    return lambda x, w: F.conv2d(F.pad(x, (l, r, t, b)), w, None, spec.stride, 0, spec.dilation, spec.groups)


def fastconv_fn(alg: Algorithm, spec: ConvSpec) -> Callable:
    """What a repeated fastconv.conv2d call runs once its validation is cached: the plan's
    eager path (fastconv/_eager.py: the Triton kernels without the dispatcher, when nothing
    observes the call) or else the algorithm's registered op, autograd included. The plan is
    built from the spec, so asymmetric padding needs no F.pad."""
    from ..functional import Plan, run

    p = Plan(False, spec, alg, "none", eager=True)
    return lambda x, w: run(p, x, w, None)


def unfold_fn(spec: ConvSpec) -> Callable:
    """The hand-written im2col people use: F.unfold to (N, C·R·S, L) columns, then a matmul by the
    weight ((g, K/g, C/g·R·S), batched over groups)."""
    g, kg, crs = spec.groups, spec.Kg, spec.Cg * spec.R * spec.S
    n, k, ho, wo = spec.output_shape
    pad = _sym_padding(spec)
    t, b, l, r = spec.padding

    def fn(x, w):
        if pad is None:
            x = F.pad(x, (l, r, t, b))
        cols = F.unfold(x, (spec.R, spec.S), dilation=spec.dilation, padding=pad or 0, stride=spec.stride)
        if g == 1:
            # One GEMM (N·L, CRS) @ (CRS, K); the result is a (N, K, Ho, Wo) view, channels-last in
            # memory. The batched forms (the torch.nn.Unfold docs' example, or (K, CRS) @ (N, CRS, L))
            # become N matrix products by torch.matmul, each re-reading the whole weight: measured
            # 20-45 ms against 3 ms here for Linear 1024->512 at N=64.
            cols = cols.transpose(1, 2).reshape(n * ho * wo, crs)
            return (cols @ w.reshape(k, crs).t()).view(n, ho, wo, k).permute(0, 3, 1, 2)
        out = torch.matmul(w.reshape(g, kg, crs), cols.view(n, g, crs, ho * wo))
        return out.view(n, k, ho, wo)

    return fn


def gemm_operands(spec: ConvSpec, n: int = ROTATE, seed: int = 1):
    """Operands of the equivalent GEMM, M = N·Ho·Wo, N = K/g, K = (C/g)·R·S: A (g,M,K) rotated, B (g,K,N)."""
    m, nn, kk = spec.gemm_shape
    g = torch.Generator().manual_seed(seed)
    shape_a = (m, kk) if spec.groups == 1 else (spec.groups, m, kk)
    shape_b = (kk, nn) if spec.groups == 1 else (spec.groups, kk, nn)

    def rnd(shape, scale=1.0):
        return (torch.randn(shape, generator=g) * scale).to(device=spec.device, dtype=spec.dtype)

    return [rnd(shape_a) for _ in range(n)], rnd(shape_b, kk ** -0.5)


def gemm_fn(spec: ConvSpec) -> tuple[str, Callable]:
    """torch.mm for one group, torch.bmm over groups."""
    return ("mm", torch.mm) if spec.groups == 1 else ("bmm", torch.bmm)


def linear_fn(spec: ConvSpec) -> Callable:
    """What nn.Linear(K, N, bias=False) runs, F.linear, on the (M, K) GEMM operand with the weight
    stored (out, in) as Linear keeps it: pass B.t().contiguous() as its second operand. groups == 1."""
    return lambda a, wt: F.linear(a, wt)


def with_backward(fn: Callable) -> Callable:
    """Forward + backward (grads of both operands) of fn(a, b); gradients returned, never accumulated
    into .grad (that would add an extra kernel). The output gradient is random and made once."""
    cache = {}

    def step(a, b):
        out = fn(a, b)
        key = (out.shape, out.stride())
        if key not in cache:
            cache[key] = torch.randn_like(out)
        return torch.autograd.grad(out, (a, b), cache[key])

    return step


def candidate(fn: Callable, xs, w, backward: bool) -> Rotating:
    """A zero-argument callable for the timer, rotating over the inputs."""
    if backward:
        xs = [x.detach().requires_grad_(True) for x in xs]
        w = w.detach().requires_grad_(True)
        fn = with_backward(fn)
    return Rotating(fn, [(x, w) for x in xs])


def torch_backend(spec: ConvSpec, x: torch.Tensor, w: torch.Tensor) -> str:
    """Which ATen convolution backend F.conv2d dispatches this call to (e.g. 'mkldnn', 'slow2d',
    'cudnn', 'cuda_depthwise2d'), as ATen itself selects it."""
    pad = _sym_padding(spec) or (0, 0)
    try:
        b = torch._C._select_conv_backend(x, w, None, list(spec.stride), list(pad), list(spec.dilation),
                                          False, [0, 0], spec.groups)
        name = str(b).split(".")[-1]
    except (AttributeError, RuntimeError, TypeError):  # private API: fall back to the public flags
        if x.is_cuda:
            name = "cudnn" if torch.backends.cudnn.is_available() else "cuda_native"
        elif torch.backends.mkldnn.is_available() and x.dtype in (torch.float32, torch.bfloat16):
            name = "mkldnn?"
        else:
            name = "slow_conv2d?"
    return _BACKEND_NAMES.get(name, name.lower())


_BACKEND_NAMES = {
    "Mkldnn": "mkldnn(oneDNN)", "MkldnnEmpty": "mkldnn(oneDNN)", "Slow2d": "slow_conv2d(thnn)",
    "SlowDilated2d": "slow_conv_dilated2d", "Cudnn": "cudnn", "CudaDepthwise2d": "cuda_depthwise2d",
    "Empty": "empty", "Miopen": "miopen", "Mps": "mps", "Overrideable": "overrideable",
    "Winograd3x3Depthwise": "winograd3x3_depthwise", "Xnnpack2d": "xnnpack",
}
