"""Where the host time of one Triton conv call goes, below fastconv.conv2d (CUDA only).

    python benchmarks/triton_launch.py [--calls 3000]

For the implicit-GEMM forward of a tiny conv (the kernel itself takes a few us) it times,
per call: the kernel module's entry (plan hit), its plan key, the output allocation, the
JIT launch `kernel[grid](...)` with the plan's argument list (precomputed), Triton's binder
alone, the compiled kernel's own launcher `CompiledKernel[grid](*args)` (what the JIT
launch ends in), the plans' `_common.Launch` and a bare one-argument kernel; and it checks
that the compiled-kernel launch writes what the JIT launch writes.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def per_call_us(fn, calls: int) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=3000)
    args = p.parse_args()
    import triton
    import triton.language as tl

    from fastconv.kernels import _common, _plan, igemm

    dev = "cuda"
    x = torch.randn(2, 16, 8, 8, device=dev).to(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3, device=dev)
    b = torch.randn(16, device=dev)
    st, pad, dil = [1, 1], [1, 1, 1, 1], [1, 1]
    ref = F.conv2d(x, w, b, 1, 1)
    out = igemm.conv2d(x, w, b, st, pad, dil, 1, "none")
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)

    # The plan's own launch arguments (a Plan carries its Launch objects).
    (plan,) = igemm.FAMILY.plans()
    launch = plan.launches[0]
    kern, grid, geometry, kw = launch.kernel, launch.grid, launch.scalars, launch.kwargs
    y = torch.empty_like(ref)
    grid3 = (*grid, 1)  # a CompiledKernel's launcher takes all three dimensions
    jit_launch = lambda: kern[grid](x, w, b, y, *geometry, **kw)  # noqa: E731
    compiled = jit_launch()
    torch.cuda.synchronize()
    y_jit = y.clone()
    names = kern.arg_names
    pos = [x, w, b, y, *geometry]
    all_args = pos + [kw[n] for n in names[len(pos):]]
    y.fill_(float("nan"))
    try:
        compiled[grid3](*all_args)
        torch.cuda.synchronize()
        same = torch.equal(y, y_jit)
    except Exception as e:  # noqa: BLE001 - report and time the rest
        same = f"failed: {e!r}"[:120]
    print(f"triton {triton.__version__}, torch {torch.__version__}; kernel params: {len(names)} "
          f"({len(pos)} runtime); compiled-kernel launch == JIT launch: {same}")

    @triton.jit
    def _noop(x_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n), mask=i < n)

    fast = _common.Launch(kern, grid, 4, geometry, kw, x.device)
    fast(x, w, b, y)  # the first launch per signature goes through the JIT
    y.fill_(float("nan"))
    fast(x, w, b, y)
    torch.cuda.synchronize()
    print(f"Launch writes what the JIT launch writes: {torch.equal(y, y_jit)}; direct launch "
          f"in use: {bool(fast.compiled)}")
    t = torch.zeros(64, device=dev)
    rows = {
        "kernels.igemm.conv2d (plan hit)": lambda: igemm.conv2d(x, w, b, st, pad, dil, 1, "none"),
        "plan_key": lambda: _plan.plan_key(x, w, b, st, pad, dil, 1, "none"),
        "new_output (torch.empty, channels_last)": lambda: _common.new_output((2, 16, 8, 8), x, True),
        "kernel[grid](...) JIT launch, args precomputed": jit_launch,
        **({"CompiledKernel[grid](*args)": lambda: compiled[grid3](*all_args)}
           if same is True else {}),
        f"_common.Launch (the plans' launch; direct={_common.DIRECT_LAUNCH})": lambda: fast(x, w, b, y),
        "bare JIT launch, 3 params": lambda: _noop[(1,)](t, 64, BLOCK=64),
    }
    try:  # Triton's binder alone (internal layout: the last item of the per-device cache)
        binder = kern.device_caches[torch.cuda.current_device()][-1]
        binder(*pos, **kw)
        rows["  of which the binder (bind + specialize)"] = lambda: binder(*pos, **kw)
    except Exception as e:  # noqa: BLE001
        print("binder not reachable:", repr(e)[:100])
    rows["F.conv2d (cuDNN)"] = lambda: F.conv2d(x, w, b, 1, 1)
    torch.backends.cudnn.benchmark = True
    for label, fn in rows.items():
        print(f"{label:50s} {per_call_us(fn, args.calls):8.2f} us")


if __name__ == "__main__":
    main()
