"""Where a converted model's eager step spends its host time (GPU machine).

    python benchmarks/model_host.py --model mobilenet_v2 --precision bf16_cl [--steps 20]

For one torchvision model (random weights) and one precision, converted with
fastconv.convert and unconverted: the host time of a forward (no grad) and of a training
step, measured as wall time over --steps back-to-back calls (the GPU work is small enough
at this batch that the host sets the pace; the CUDA-graph rows of models_gpu.py give the
GPU work alone); the kernel launches that still go through Triton's JIT after warm-up
(kernels/_common.Launch objects without a direct runner); the calls that synchronize with
the GPU (torch.cuda.set_sync_debug_mode); and cProfile's top functions of one step.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import importlib.util
import os
import pstats
import sys
import time
import warnings

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
import fastconv  # noqa: E402
from fastconv.kernels import _common  # noqa: E402


def _models_gpu():
    spec = importlib.util.spec_from_file_location(
        "models_gpu", os.path.join(_ROOT, "benchmarks", "models_gpu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def record_launches():
    """Every kernels/_common.Launch made from now on (plans make theirs once)."""
    made = []
    init = _common.Launch.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)
    _common.Launch.__init__ = recording_init
    return made


def launch_states(made):
    """kernel name -> Counter of 'direct' / 'jit (never cached)' / 'jit (disabled)'."""
    states = collections.defaultdict(collections.Counter)
    for launch in made:
        name = getattr(launch.kernel, "__name__", None) or getattr(
            getattr(launch.kernel, "fn", None), "__name__", repr(launch.kernel))
        if launch.compiled is None:
            state = "jit (direct launch off or failed its check)"
        elif launch.compiled:
            state = "direct"
        else:
            state = "jit (no signature cached yet)"
        states[name][state] += 1
    return states


def host_ms(fn, steps):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def sync_calls(fn):
    """Messages of the synchronizing calls one fn() makes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return collections.Counter(str(w.message).splitlines()[0][:100] for w in caught)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--precision", default="bf16_cl", choices=["tf32", "bf16_cl", "fp32"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--profile-top", type=int, default=25)
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    mg = _models_gpu()
    torch.backends.cudnn.benchmark = True
    mg.set_precision(args.precision)
    made = record_launches()
    torch.manual_seed(0)
    ref = mg.prepare(mg.build(args.model, False), args.precision, "cuda")
    fast = fastconv.convert(ref)
    x = mg.make_input(args.batch, 224, args.precision, "cuda")
    print(f"{args.model} {args.precision} batch {args.batch}: "
          f"{len(fast.fastconv_report.swapped)} convs swapped")
    for label, model in (("torch", ref), ("fastconv", fast)):
        fwd = mg.forward_fn(model.eval(), x)
        train = mg.train_fn(model.train(), x)
        for _ in range(3):  # tuning, compiling, direct-launch checks
            fwd()
            train()
        torch.cuda.synchronize()
        print(f"\n== {label}: host ms per call (wall time of {args.steps} back-to-back calls)")
        print(f"forward (eval, no grad) {host_ms(fwd, args.steps):8.2f}")
        print(f"train step              {host_ms(train, args.steps):8.2f}")
        syncs = sync_calls(train)
        print(f"synchronizing calls in one train step: {sum(syncs.values())}")
        for msg, count in syncs.most_common(8):
            print(f"  {count:4d}  {msg}")
        if label == "fastconv":
            print("\nTriton launches after warm-up (kernel: state x count)")
            for name, states in sorted(launch_states(made).items()):
                print(f"  {name:36s} " + ", ".join(f"{s} x{c}" for s, c in states.items()))
        prof = cProfile.Profile()
        prof.enable()
        train()
        torch.cuda.synchronize()
        prof.disable()
        print(f"\ncProfile of one {label} train step (by own time)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile_top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
