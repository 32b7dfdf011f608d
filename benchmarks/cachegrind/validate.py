"""Model vs simulator vs valgrind for every CPU algorithm on a few layers.

    python benchmarks/cachegrind/validate.py [--out docs/cache-validation.json]
        [--build-root /work/wt-x]  # every kernel from that tree's build (its .venv)
        [--branch-root /work/wt]   # or each algorithm X from its own build, /work/wt/X

Valgrind does not implement AVX-512 (3.19 here; the request is
bugs.kde.org 383010): its CPUID hides it, so fastconv's cpu_isa() (and MKL)
pick their AVX2 paths under valgrind. run_one.py reports the ISA the kernels ran with, and model and
simulator are evaluated for that ISA's loop nests; `--isa avx512` (with
--no-valgrind) compares model and simulator on the AVX-512 nests instead.

Valgrind's cache simulator (cachegrind's, which callgrind shares: two levels,
D1 and LL, LRU, write-allocate, no prefetch, the policy of csrc/cachesim.cpp)
is given this machine's L1d and L2 (the L3 the VM reports, 480 MiB, would hold
every layer). We run the real kernel once (run_one.py) under
`valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no` with client
requests around the conv (cgctl.c), so Python and the torch import run
uninstrumented and only the conv's accesses are counted, from empty caches.
(Plain cachegrind in valgrind 3.19 cannot start/stop instrumentation, and a
baseline subtraction costs a second ~10-minute torch import per layer.)
The simulator replays the kernel's loop nest through the same two levels; the
model evaluates its terms at the same two capacities. Compared: data
references, D1 misses and LL misses.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from fastconv.explain import model as cmodel  # noqa: E402
from fastconv.explain.machine import CacheLevel, cache_levels  # noqa: E402
from fastconv.explain.simulate import simulate  # noqa: E402
from fastconv.spec import ConvSpec  # noqa: E402

# (name, N,C,H,W, K,Cg,R,S, stride, pad, groups)
LAYERS = [
    ("3x3 64->64 28x28", (1, 64, 28, 28), (64, 64, 3, 3), 1, 1, 1),
    ("1x1 128->128 14x14", (1, 128, 14, 14), (128, 128, 1, 1), 1, 0, 1),
    ("3x3 s2 3->32 64x64", (1, 3, 64, 64), (32, 3, 3, 3), 2, 1, 1),
    ("dw 3x3 64ch 28x28", (1, 64, 28, 28), (64, 1, 3, 3), 1, 1, 64),
    ("3x3 16->16 14x14", (1, 16, 14, 14), (16, 16, 3, 3), 1, 1, 1),
]


def levels_for_cachegrind():
    lv = cache_levels()
    l1 = lv[0]
    l2 = lv[1] if len(lv) > 1 else CacheLevel("L2", 2 << 20, 16, 64)
    return [l1, CacheLevel("LL", l2.size, l2.ways, l2.line)]


def branch_blocking(root: str) -> dict:
    """The blocking constants of the kernel build at `root` (its own _C.blocking())."""
    py = os.path.join(root, ".venv", "bin", "python")
    out = subprocess.run([py, "-c", "import json, fastconv; print(json.dumps(dict(fastconv._C.blocking())))"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root,
                                                                  PYTHONDONTWRITEBYTECODE="1"), check=True,
                         cwd=root)  # not this tree's fastconv
    return json.loads(out.stdout.strip().splitlines()[-1])


def kernel_build(args, algo: str) -> tuple[str, str] | None:
    """(python, tree) whose build runs `algo`'s kernel, or None for this tree and interpreter."""
    root = None
    if args.build_root:
        root = args.build_root
    elif args.branch_root and algo != "reference":
        root = os.path.join(args.branch_root, algo)
    if root is None:
        return None
    py = os.path.join(root, ".venv", "bin", "python")
    if not os.path.exists(py):
        if args.build_root:
            raise SystemExit(f"--build-root {root}: no {py}")
        return None  # --branch-root without that algorithm's tree: this tree's build
    return py, root


def build_cgctl() -> str:
    out = os.path.join(tempfile.gettempdir(), "fastconv_cgctl.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", os.path.join(HERE, "cgctl.c"), "-o", out], check=True)
    return out


def valgrind(algo, inp, wt, stride, pad, groups, layout, levels, python, pythonpath, cgctl) -> dict:
    """Data refs, D1 misses, LL misses of one conv under callgrind's cache simulator,
    and the ISA the kernels ran with there."""
    l1, ll = levels
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        info = os.path.join(d, "info.json")
        cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--instr-atstart=no",
               f"--callgrind-out-file={out}",
               f"--D1={l1.size},{l1.ways},{l1.line}", f"--LL={ll.size},{ll.ways},{ll.line}",
               f"--I1={32 << 10},8,64", python, os.path.join(HERE, "run_one.py"), algo,
               ",".join(map(str, inp)), ",".join(map(str, wt)), str(stride), str(pad), str(groups), layout, "1"]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", FASTCONV_CGCTL=cgctl, OMP_NUM_THREADS="1",
                   FASTCONV_CG_INFO=info)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        dumps = sorted((f for f in os.listdir(d) if f.startswith("cg.out.")), key=lambda f: int(f.split(".")[-1]))
        if len(dumps) < 2:
            raise RuntimeError(f"expected two callgrind dumps for {algo} {inp} {wt}, got {dumps}")
        counts = [_totals(open(os.path.join(d, f)).read()) for f in dumps[-2:]]
        isa = json.load(open(info))["cpu_isa"]
    # Minus the fixed per-call cost: the tiny call's references and misses
    # (~2,000 line misses per call, of memory the op touches afresh every call:
    # small layers show it too, though the tiny call ran just before).
    return {k: counts[1][k] - counts[0][k] for k in counts[1]} | {"fixed": counts[0], "version": 3, "cpu_isa": isa}


def _totals(text: str) -> dict:
    events = re.search(r"^events: (.*)$", text, re.M).group(1).split()
    totals = [int(v) for v in re.search(r"^totals: (.*)$", text, re.M).group(1).split()]
    c = dict(zip(events, totals))
    return {"refs": c["Dr"] + c["Dw"], "d1_misses": c["D1mr"] + c["D1mw"], "ll_misses": c["DLmr"] + c["DLmw"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--algos", default="reference,im2col,direct,depthwise")
    p.add_argument("--layouts", default="nchw,nhwc")
    p.add_argument("--layers", default=None, help="indices into LAYERS, comma-separated")
    p.add_argument("--no-valgrind", action="store_true")
    p.add_argument("--cg-cache", default=None,
                   help="JSON of earlier valgrind results: used for cases it has (with --no-valgrind), "
                        "and new results are added to it")
    p.add_argument("--build-root", default=None,
                   help="run every algorithm's kernel from this tree's build (BUILD_ROOT/.venv), with its blocking")
    p.add_argument("--branch-root", default=None,
                   help="run algo X's kernel from BRANCH_ROOT/X (its own build; reference from this tree)")
    p.add_argument("--isa", default="valgrind",
                   help="the ISA whose loop nests model and simulator follow: avx2, avx512, portable, or "
                        "'valgrind' (default): the one the kernel ran with under valgrind (avx2 where "
                        "there is no result)")
    args = p.parse_args(argv)
    levels = levels_for_cachegrind()
    caps = {"L1": (levels[0].size, levels[0].ways, levels[0].line), "L2": (levels[1].size, levels[1].ways, levels[1].line)}
    if args.build_root and args.branch_root:
        p.error("--build-root and --branch-root exclude each other")
    b = cmodel.blocking()
    if args.build_root:
        b = branch_blocking(args.build_root)
    rows = []
    cgctl = None if args.no_valgrind else build_cgctl()
    cache = {}
    if args.cg_cache and os.path.exists(args.cg_cache):
        cache = json.load(open(args.cg_cache))
    layers = LAYERS if args.layers is None else [LAYERS[int(i)] for i in args.layers.split(",")]
    for name, inp, wt, stride, pad, groups in layers:
        for layout in args.layouts.split(","):
            spec = ConvSpec(*inp, wt[0], wt[2], wt[3], (stride, stride), (pad,) * 4, (1, 1), groups, layout=layout)
            for algo in args.algos.split(","):
                if algo == "depthwise" and not spec.is_depthwise:
                    continue
                if algo == "reference" and spec.macs > 1e6:
                    continue  # the plain loop nest is too slow under valgrind for big layers
                build = kernel_build(args, algo)
                bb = b if build is None or args.build_root else branch_blocking(build[1])
                row = {"layer": name, "layout": layout, "algo": algo}
                key = f"{name}|{layout}|{algo}"
                if key in cache:
                    row["cachegrind"] = dict(cache[key])
                    if cache[key].get("version", 1) == 2:
                        # Version 2 kept the misses raw: subtract the fixed per-call cost.
                        for k in ("d1_misses", "ll_misses"):
                            row["cachegrind"][k] -= cache[key]["fixed"][k]
                if not args.no_valgrind:
                    py, path = build or (sys.executable, os.path.dirname(os.path.dirname(HERE)))
                    row["kernel_from"] = path
                    row["cachegrind"] = valgrind(algo, inp, wt, stride, pad, groups, layout, levels, py, path, cgctl)
                    if args.cg_cache:
                        cache[key] = row["cachegrind"]
                        json.dump(cache, open(args.cg_cache, "w"), indent=1)
                isa = args.isa
                if isa == "valgrind":
                    isa = row.get("cachegrind", {}).get("cpu_isa", "avx2")
                row["isa"] = isa
                m = cmodel.model(algo, spec, bb, isa=isa).bytes_per_level(caps)
                sim_levels = [levels[0], CacheLevel("L2", levels[1].size, levels[1].ways, 64)]
                row["model"] = {"refs_bytes": m["L1"], "d1_misses": m["L2"] / 64, "ll_misses": m["DRAM"] / 64}
                # "sim": every access; "sim_vg": as valgrind sees the nest (no masked stores).
                for key, vg_view in (("sim", False), ("sim_vg", True)):
                    sim = simulate(algo, spec, sim_levels, sample_accesses=0, reuse_histogram=False,
                                   blocking_constants=bb, isa=isa, valgrind_view=vg_view)
                    row[key] = {"refs": sim["accesses"], "d1_misses": sim["levels"]["L1"]["misses"],
                                "ll_misses": sim["levels"]["L2"]["misses"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    res = {"levels": [lv.__dict__ for lv in levels], "blocking": b, "rows": rows}
    if args.out:
        json.dump(res, open(args.out, "w"), indent=1)
        print(markdown(res))
    return res


def _dev(a, b):
    return "" if not b else f"{(a - b) / b:+.0%}"


def markdown_model_vs_sim(res: dict) -> str:
    """Model vs simulator only (rows without valgrind results, e.g. the AVX-512 nests)."""
    out = ["| layer | layout | algo | isa | D1 misses model | sim | model/sim | LL misses model | sim | model/sim |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        m, s = r["model"], r["sim"]
        out.append(f"| {r['layer']} | {r['layout']} | {r['algo']} | {r['isa']} | {m['d1_misses'] / 1e3:.1f} | "
                   f"{s['d1_misses'] / 1e3:.1f} | {_dev(m['d1_misses'], s['d1_misses'])} | {m['ll_misses'] / 1e3:.1f} | "
                   f"{s['ll_misses'] / 1e3:.1f} | {_dev(m['ll_misses'], s['ll_misses'])} |")
    return "\n".join(out)


def markdown(res: dict) -> str:
    """The table for docs/cache-validation.md: misses in thousands of lines. "valgrind" is
    net of the fixed per-call cost (a bracketed tiny conv); "raw" includes it. "unseen":
    the simulator's misses of the masked stores valgrind does not see; sim/vg
    compares the simulator without them, model/vg valgrind's count with them."""
    if not any("cachegrind" in r for r in res["rows"]):
        return markdown_model_vs_sim(res)
    out = ["| layer | layout | algo | isa | D1 misses model | sim | valgrind (raw) | unseen | model/vg | sim/vg "
           "| LL misses model | sim | valgrind (raw) | unseen | model/vg | sim/vg | data refs sim | valgrind |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        m, s, c = r["model"], r["sim"], r.get("cachegrind", {})
        sv = r.get("sim_vg", s)
        fx = c.get("fixed", {})
        k = lambda v: f"{v / 1e3:.1f}" if v is not None else "-"  # noqa: E731
        raw = lambda key: (f"{k(c.get(key))} ({k(c[key] + fx[key])})" if key in c and key in fx  # noqa: E731
                           else k(c.get(key)))
        cells = []
        for key in ("d1_misses", "ll_misses"):
            unseen = s[key] - sv[key]
            vg = c.get(key)
            cells.append(f"{k(m[key])} | {k(s[key])} | {raw(key)} | {k(unseen) if unseen else ''} | "
                         f"{_dev(m[key], None if vg is None else vg + unseen)} | {_dev(sv[key], vg)}")
        out.append(f"| {r['layer']} | {r['layout']} | {r['algo']} | {r.get('isa', 'avx2')} | {cells[0]} | {cells[1]} | "
                   f"{k(sv['refs'])} | {k(c.get('refs'))} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
