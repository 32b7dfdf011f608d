"""Host time per call of each layer of fastconv's call stack, on tiny shapes where the
kernel itself is negligible (so wall time per call = host overhead), against F.conv2d.

    python benchmarks/host_overhead.py [--device cuda] [--calls 2000] [--profile]
    TRITON_INTERPRET=1 python benchmarks/host_overhead.py --mock-kernels   # CPU, no GPU

Rows, outermost first: the nn.Conv2d module, fastconv.conv2d (with the eager fast path,
and with it switched off: through the registered op), the registered op through the
dispatcher, the kernel module's Python entry, and (CUDA) a bare Triton launch; then the
same for a training step (forward + backward). Rows take turns in rounds (the best round
counts), and the last lines give fastconv.nn.Conv2d's host time over nn.Conv2d's, no grad
and forward+backward (meaningful on a GPU, where the kernel time is negligible).
--profile prints cProfile's top functions for the module forward and a training step.
--mock-kernels replaces the Triton kernel modules' entry points by the output allocation
alone, so that on a machine without a GPU (Triton algorithms on CPU tensors under
TRITON_INTERPRET=1) the rows measure the Python stack above the kernels.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import time

import torch
import torch.nn.functional as F

import fastconv
from fastconv import _eager


REPEATS = 7


def per_call_us(cases: dict, calls: int, sync, repeats: int = REPEATS) -> dict:
    """label -> host us per call of each case. The cases take turns, one block of `calls`
    calls each per round, so that a slow spell of a noisy host hits every row alike; each
    row keeps its best round (the least-disturbed estimate of the host cost)."""
    for fn in cases.values():
        for _ in range(50):
            fn()
    sync()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for label, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            best[label] = min(best[label], (time.perf_counter() - t0) / calls * 1e6)
    return best


def mock_kernels() -> None:
    """Kernel entry points that only allocate their output (see --mock-kernels)."""
    from fastconv._ops import output_memory_format, output_size

    def conv2d(x, w, bias, stride, padding, dilation, groups, activation="none"):
        size = output_size(x.shape, w.shape, stride, padding, dilation)
        return torch.empty(size, dtype=x.dtype, device=x.device,
                           memory_format=output_memory_format(x, w))

    def grad_input(dy, w, input_size, *args):
        return torch.empty(input_size, dtype=dy.dtype, device=dy.device,
                           memory_format=output_memory_format(dy, dy))

    def grad_weight(dy, x, weight_size, *args):
        return torch.empty(weight_size, dtype=x.dtype, device=x.device)

    for module in ("igemm", "depthwise"):
        mod = importlib.import_module(f"fastconv.kernels.{module}")
        mod.conv2d, mod.conv2d_grad_input, mod.conv2d_grad_weight = conv2d, grad_input, grad_weight


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--mock-kernels", action="store_true")
    args = p.parse_args()
    dev = args.device
    if args.mock_kernels:
        mock_kernels()
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    rows, ratios = [], []
    for name, c, k, groups, ks in (("dense 3x3", 16, 16, 1, 3), ("depthwise 3x3", 16, 16, 16, 3)):
        x = torch.randn(2, c, 8, 8, device=dev).to(memory_format=torch.channels_last)
        ref = torch.nn.Conv2d(c, k, ks, padding=1, groups=groups).to(dev)
        mod = fastconv.convert(ref)
        w, b = mod.weight.detach(), mod.bias.detach()
        spec = fastconv.conv_spec(x, w, b, 1, 1, 1, groups)[2]
        # --mock-kernels on a CPU: the Triton algorithm a GPU would run, interpreted.
        algo = ("triton_depthwise" if spec.is_depthwise else "triton_igemm") if (
            args.mock_kernels and dev == "cpu") else "auto"
        mod.algo = algo
        alg = fastconv.functional.select(spec, algo)
        op = alg.forward
        xg = x.clone().requires_grad_(True)

        def train_step(m):
            y = m(xg)
            y.backward(torch.ones_like(y))

        def ops_path(fn):  # the same call with the eager fast path switched off
            def call():
                _eager.ENABLED = False
                try:
                    return fn()
                finally:
                    _eager.ENABLED = True
            return call

        no_grad = {
            "F.conv2d (cuDNN/oneDNN), no grad": lambda: F.conv2d(x, w, b, 1, 1, 1, groups),
            "nn.Conv2d (torch), no grad": lambda: ref(x),
            "fastconv.nn.Conv2d, no grad": lambda: mod(x),
            "fastconv.conv2d, no grad": lambda: fastconv.conv2d(x, w, b, 1, 1, 1, groups, algo=algo),
            "fastconv.conv2d, no grad, via the op": ops_path(
                lambda: fastconv.conv2d(x, w, b, 1, 1, 1, groups, algo=algo)),
            f"torch.ops.fastconv.{alg.op}_conv2d": lambda: op(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], groups, "none"),
        }
        if alg.name.startswith("triton_"):
            kern = importlib.import_module("fastconv.kernels." + alg.name.split("_", 1)[1])
            short = kern.__name__.rsplit('.', 1)[1]
            no_grad[f"kernels.{short}.conv2d (no dispatcher)"] = (
                lambda: kern.conv2d(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], groups, "none"))
            # The training step's backward pieces, one at a time.
            dy = F.conv2d(x, w, b, 1, 1, 1, groups)
            geo = ([1, 1], [1, 1, 1, 1], [1, 1], groups)
            no_grad[f"kernels.{short}.conv2d_grad_input"] = (
                lambda: kern.conv2d_grad_input(dy, w, list(x.shape), *geo))
            no_grad[f"kernels.{short}.conv2d_grad_weight"] = (
                lambda: kern.conv2d_grad_weight(dy, x, list(w.shape), *geo))
            no_grad["bias gradient, dy.sum((0, 2, 3))"] = lambda: dy.sum((0, 2, 3))
            no_grad["torch.empty_like(dy)"] = lambda: torch.empty_like(dy)
        train = {
            "nn.Conv2d fwd+bwd (torch)": lambda: train_step(ref),
            "fastconv.nn.Conv2d fwd+bwd": lambda: train_step(mod),
            "fastconv.nn.Conv2d fwd+bwd, via the op": ops_path(lambda: train_step(mod)),
        }
        cases = {**no_grad, **train}
        with torch.no_grad():
            times = per_call_us(no_grad, args.calls, sync)
        times.update(per_call_us(train, args.calls // 4, sync))
        rows += [(name, alg.name, label, times[label]) for label in cases]
        ratios.append((name,
                       times["fastconv.nn.Conv2d, no grad"] / times["nn.Conv2d (torch), no grad"],
                       times["fastconv.nn.Conv2d fwd+bwd"] / times["nn.Conv2d fwd+bwd (torch)"]))
        if args.profile:
            for label in ("fastconv.nn.Conv2d, no grad", "fastconv.nn.Conv2d fwd+bwd"):
                prof = cProfile.Profile()
                with torch.set_grad_enabled("bwd" in label):
                    prof.enable()
                    for _ in range(500):
                        cases[label]()
                    sync()
                    prof.disable()
                print(f"\n=== cProfile: {name}: {label} (500 calls) ===")
                pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    if dev == "cuda":
        import triton
        import triton.language as tl

        @triton.jit
        def _noop(x_ptr, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n), mask=i < n)

        t = torch.zeros(64, device=dev)
        rows.append(("-", "-", "bare Triton launch (1 program)",
                     per_call_us({"": lambda: _noop[(1,)](t, 64, BLOCK=64)}, args.calls,
                                 sync)[""]))
    print(f"\nhost time per call, us ({dev}, torch {torch.__version__})")
    for r in rows:
        print(f"{r[0]:14s} {r[1]:17s} {r[2]:45s} {r[3]:8.1f}")
    print("\nfastconv.nn.Conv2d / nn.Conv2d host time (same rounds)")
    for name, no_grad, train in ratios:
        print(f"{name:14s} no grad {no_grad:5.2f}x   fwd+bwd {train:5.2f}x")


if __name__ == "__main__":
    main()
