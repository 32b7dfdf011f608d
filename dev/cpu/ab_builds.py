"""Two builds of fastconv, interleaved: per layer, the minimum thread CPU time of each.

    python dev/cpu/ab_builds.py DIR_A DIR_B [--batch 1 8] [--layout nchw nhwc] [--filter 3x3]

DIR_A and DIR_B each hold a copy of the fastconv package (with its built _C). One worker
process per build, 1 thread; for each layer the workers take turns (--repeats rounds of
0.1 s of fastconv.conv2d(algo="auto") each), so both see the same machine state, and the
minimum per build is printed with B's speed-up over A. Run it once with two copies of
the same build first: that control's spread (0.83-1.02 in dev/cpu/results/direct3x3b/) is
the smallest difference one run can show.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORKER = r"""
import json, sys, time, torch
import fastconv
from fastconv.bench import tables
torch.set_num_threads(1)
cache = {}
for line in sys.stdin:
    suite, batch, layout, name = json.loads(line)
    key = (batch, layout, name)
    if key not in cache:
        layer = next(l for l in tables.load(suite, batch=batch, layout=layout) if l.name == name)
        s = layer.spec
        mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        x = torch.randn(s.N, s.C, s.H, s.W).contiguous(memory_format=mf)
        w = torch.randn(s.K, s.C // s.groups, s.R, s.S)
        pad = (s.padding[0], s.padding[2])
        cache[key] = lambda: fastconv.conv2d(x, w, None, s.stride, pad, groups=s.groups)
        cache[key]()
    run = cache[key]
    t0, n = time.thread_time(), 0
    while time.thread_time() - t0 < 0.1:
        run()
        n += 1
    print((time.thread_time() - t0) / n, flush=True)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--suite", default="resnet50")
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--layout", nargs="+", default=["nchw", "nhwc"])
    ap.add_argument("--filter", nargs="+", default=["3x3", "conv1"])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    workers = []
    for d in (args.a, args.b):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(d), OMP_NUM_THREADS="1")
        workers.append(subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env))
    sys.path.insert(0, os.path.abspath(args.a))
    from fastconv.bench import tables
    for layout in args.layout:
        for batch in args.batch:
            for layer in tables.load(args.suite, batch=batch, layout=layout):
                if not any(f in layer.name for f in args.filter):
                    continue
                best = [float("inf")] * 2
                for _ in range(args.repeats):
                    for i, w in enumerate(workers):
                        w.stdin.write(json.dumps([args.suite, batch, layout, layer.name]) + "\n")
                        w.stdin.flush()
                        best[i] = min(best[i], float(w.stdout.readline()))
                print(f"{layout} N={batch} {layer.name:22s} A {best[0] * 1e3:8.3f} ms  B {best[1] * 1e3:8.3f} ms"
                      f"  B/A speed x {best[0] / best[1]:.3f}", flush=True)
    for w in workers:
        w.stdin.close()
        w.wait()


if __name__ == "__main__":
    main()
