"""Differential fuzz of fastconv.conv2d against float64 F.conv2d, and a hostile-input list.

    python -m fastconv.testing.fuzz --n 2000 --seed 7          # random configs + hostile list
    python -m fastconv.testing.fuzz --n 0 --hostile            # the hostile list only
    TRITON_INTERPRET=1 python -m fastconv.testing.fuzz --n 50  # Triton algorithms too (slow)

Random configs: valid conv2d calls (groups, depthwise multipliers, stride, dilation,
'same'/'valid'/asymmetric padding, bias, fused activation, NCHW/NHWC, strided views,
unbatched inputs, float32/float64), each run by every applicable algorithm, forward and every
gradient, against F.conv2d in float64 on the same (already rounded) inputs.

Hostile calls: malformed or extreme arguments. Each must behave as F.conv2d does: raise an
exception that an `except` clause written for F.conv2d's exception catches, or return what
F.conv2d returns. A few cases deliberately differ (`may_refuse`: F.conv2d wraps around in
int64 or tries a huge allocation; fastconv refuses with a message).

Cases run in a worker subprocess that reports each case before running it, so a crash
(a signal, an abort) or a hang (--timeout) is reported against the case that caused it and
the worker restarts at the next case. Exit status 1 when anything failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import subprocess
import sys
import time
import traceback

# Max |fastconv - reference| / max(max |reference|, 1): the reduction lengths here are
# short (at most ~2000 terms), so float32 lands near 1e-6 and float64 near 1e-15.
TOL = {"float32": 1e-4, "float64": 1e-10}
ACTIVATIONS = (None, "relu", "relu6", "silu", "gelu")


# --- Random valid configs ---------------------------------------------------------------------
def random_case(seed: int, index: int) -> dict:
    rng = random.Random(f"{seed}:{index}")
    n = rng.randint(1, 3)
    if rng.random() < 0.25:  # depthwise, any channel multiplier
        c = rng.randint(2, 6)
        groups, k = c, c * rng.randint(1, 3)
    else:
        groups = rng.choice([1, 1, 1, 2, 3, 4])
        c, k = groups * rng.randint(1, 4), groups * rng.randint(1, 4)
    r, s = rng.randint(1, 5), rng.randint(1, 5)
    stride = [rng.randint(1, 3), rng.randint(1, 3)]
    dilation = [rng.randint(1, 3), rng.randint(1, 3)]
    mode = rng.choice(["int", "int", "pair", "same", "valid"])
    if mode == "same" and stride != [1, 1]:
        mode = "pair"
    padding = {"int": rng.randint(0, 3), "pair": [rng.randint(0, 3), rng.randint(0, 3)],
               "same": "same", "valid": "valid"}[mode]
    pad = (padding, padding) if isinstance(padding, int) else (
        tuple(padding) if isinstance(padding, list) else (0, 0))
    # Big enough for the dilated kernel (padding 'same' always fits).
    h = max(1, dilation[0] * (r - 1) + 1 - 2 * pad[0]) + rng.randint(0, 7)
    w = max(1, dilation[1] * (s - 1) + 1 - 2 * pad[1]) + rng.randint(0, 7)
    return dict(index=index, seed=seed, n=n, c=c, h=h, w=w, k=k, r=r, s=s, stride=stride,
                padding=padding, dilation=dilation, groups=groups,
                bias=rng.random() < 0.6, activation=rng.choice(ACTIVATIONS),
                dtype=rng.choice(["float32", "float64"]),
                layout=rng.choice(["nchw", "nchw", "nhwc"]),
                view=rng.random() < 0.2, unbatched=n == 1 and rng.random() < 0.3)


def _tensors(case):
    import torch

    gen = torch.Generator().manual_seed(case["seed"] * 100003 + case["index"])
    dtype = getattr(torch, case["dtype"])
    n, c, h, w = case["n"], case["c"], case["h"], case["w"]
    k, cg = case["k"], case["c"] // case["groups"]
    wd = w * 2 if case["view"] else w
    x = torch.randn(n, c, h, wd, generator=gen, dtype=torch.float64).to(dtype)
    if case["view"]:
        x = x[..., ::2]  # a strided view: neither NCHW- nor NHWC-contiguous
    weight = (torch.randn(k, cg, case["r"], case["s"], generator=gen, dtype=torch.float64)
              / (cg * case["r"] * case["s"]) ** 0.5).to(dtype)
    bias = torch.randn(k, generator=gen, dtype=torch.float64).to(dtype) if case["bias"] else None
    if case["layout"] == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
    if case["unbatched"]:
        x = x[0]
    return x, weight, bias, gen


def _max_rel(a, ref) -> float:
    import torch

    a, ref = a.double(), ref.double()
    if a.shape != ref.shape:
        return float("inf")
    if not torch.equal(a.isnan(), ref.isnan()):
        return float("inf")
    if a.numel() == 0:
        return 0.0
    diff = (a - ref).nan_to_num(0.0).abs().max().item()
    return diff / max(ref.nan_to_num(0.0).abs().max().item(), 1.0)


def check_random(case) -> dict:
    """Run one config through every applicable algorithm; problems listed by algorithm."""
    import torch
    import torch.nn.functional as F

    import fastconv
    from fastconv import _ops, registry

    x, weight, bias, gen = _tensors(case)
    geom = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"])
    act = case["activation"]
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    ref = _ops.apply_activation(F.conv2d(*leaves, **geom), act or "none")
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, [t for t in leaves if t is not None], g)
    # In float32 a relu's mask can flip where the pre-activation rounds across 0 (or 6):
    # the gradients of those cases are compared in float64 only.
    grads = not (case["dtype"] == "float32" and act in ("relu", "relu6"))
    _, _, spec = fastconv.conv_spec(x, weight, bias, **geom)
    tol = TOL[case["dtype"]]
    problems, ran = [], []
    for alg in registry.algorithms("cpu", include_internal=True):
        if alg.why_not(spec) is not None:
            continue
        ran.append(alg.name)
        try:
            ins = [t.detach().clone().requires_grad_() if t is not None else None
                   for t in (x, weight, bias)]
            out = fastconv.conv2d(*ins, **geom, algo=alg.name, activation=act)
            err = _max_rel(out, ref.detach())
            if err > tol:
                problems.append(f"{alg.name}: forward error {err:.3g} > {tol:g}")
            if out.dtype != x.dtype:
                problems.append(f"{alg.name}: output dtype {out.dtype}, input {x.dtype}")
            if grads:
                got = torch.autograd.grad(out, [t for t in ins if t is not None], g.to(out.dtype))
                for name, a, r in zip(("input", "weight", "bias"), got, ref_grads):
                    err = _max_rel(a, r)
                    if err > tol:
                        problems.append(f"{alg.name}: grad {name} error {err:.3g} > {tol:g}")
        except Exception as e:  # a valid call must not raise
            problems.append(f"{alg.name}: raised {type(e).__name__}: {str(e)[:300]}")
    return dict(ok=not problems, problems=problems, algorithms=ran)


# --- Hostile calls ------------------------------------------------------------------------------
def _hostile():
    """(name, make) pairs; make() -> (args, kwargs, flags). Flags: 'may_refuse': fastconv may
    raise where F.conv2d returns (its result is wrong or cannot exist); 'no_torch': F.conv2d is
    not run (it would try a huge allocation); 'fastconv_only': fastconv-specific keywords."""
    import numpy as np
    import torch

    x = lambda *s, dtype=torch.float32: torch.randn(*s, dtype=dtype)  # noqa: E731
    X, W = (2, 3, 8, 8), (4, 3, 3, 3)
    nan, inf = float("nan"), float("inf")
    cases = [
        ("stride 0", lambda: ((x(*X), x(*W)), dict(stride=0), ())),
        ("stride negative", lambda: ((x(*X), x(*W)), dict(stride=(1, -2)), ())),
        ("stride 2**63", lambda: ((x(*X), x(*W)), dict(stride=2**63), ())),
        ("stride 2**64", lambda: ((x(*X), x(*W)), dict(stride=2**64), ())),
        ("stride 2**62", lambda: ((x(*X), x(*W)), dict(stride=2**62), ())),
        ("stride float", lambda: ((x(*X), x(*W)), dict(stride=1.5), ())),
        ("stride None", lambda: ((x(*X), x(*W)), dict(stride=None), ())),
        ("stride string", lambda: ((x(*X), x(*W)), dict(stride="2"), ())),
        ("stride 3 elements", lambda: ((x(*X), x(*W)), dict(stride=(1, 1, 1)), ())),
        ("stride empty tuple", lambda: ((x(*X), x(*W)), dict(stride=()), ())),
        ("stride numpy int64", lambda: ((x(*X), x(*W)), dict(stride=np.int64(2)), ())),
        ("stride 0-d tensor", lambda: ((x(*X), x(*W)), dict(stride=torch.tensor(2)), ())),
        ("stride bool", lambda: ((x(*X), x(*W)), dict(stride=True), ("may_refuse",))),
        ("padding negative", lambda: ((x(*X), x(*W)), dict(padding=-1), ())),
        ("padding 2**62", lambda: ((x(*X), x(*W)), dict(padding=2**62), ())),
        ("padding 2**63 - 1", lambda: ((x(*X), x(*W)), dict(padding=2**63 - 1), ())),
        ("padding 2**62 dilation 2**62", lambda: ((x(1, 1, 4, 4), x(1, 1, 3, 3)),
                                                   dict(padding=2**62, dilation=2**62), ())),
        ("dilation 2**62 (int64 wraps in aten)", lambda: ((x(1, 1, 4, 4), x(1, 1, 3, 3)),
                                                          dict(dilation=2**62), ("may_refuse",))),
        ("dilation 0", lambda: ((x(*X), x(*W)), dict(dilation=0), ())),
        ("padding same strided", lambda: ((x(*X), x(*W)), dict(padding="same", stride=2), ())),
        ("padding bad string", lambda: ((x(*X), x(*W)), dict(padding="full"), ())),
        ("padding same even kernel", lambda: ((x(*X), x(4, 3, 4, 2)), dict(padding="same"), ())),
        ("groups 0", lambda: ((x(*X), x(*W)), dict(groups=0), ())),
        ("groups negative", lambda: ((x(*X), x(*W)), dict(groups=-3), ())),
        ("groups 2**63", lambda: ((x(*X), x(*W)), dict(groups=2**63), ())),
        ("groups not dividing", lambda: ((x(*X), x(*W)), dict(groups=2), ())),
        ("channel mismatch", lambda: ((x(*X), x(4, 2, 3, 3)), {}, ())),
        ("kernel larger than input", lambda: ((x(*X), x(4, 3, 9, 3)), {}, ())),
        ("kernel size 0", lambda: ((x(*X), x(4, 3, 0, 3)), {}, ())),
        ("out channels 0", lambda: ((x(*X), x(0, 3, 3, 3)), {}, ())),
        ("zero input channels", lambda: ((x(2, 0, 9, 9), x(5, 0, 3, 3)), {}, ())),
        ("zero input channels with bias", lambda: ((x(2, 0, 9, 9), x(5, 0, 3, 3), x(5)),
                                                   dict(stride=2), ())),
        ("empty batch", lambda: ((x(0, 3, 8, 8), x(*W)), {}, ())),
        ("empty height", lambda: ((x(2, 3, 0, 8), x(*W)), dict(padding=1), ())),
        ("input 2-D", lambda: ((x(3, 8), x(*W)), {}, ())),
        ("input 5-D", lambda: ((x(1, 2, 3, 8, 8), x(*W)), {}, ())),
        ("weight 3-D", lambda: ((x(*X), x(4, 3, 3)), {}, ())),
        ("bias wrong size", lambda: ((x(*X), x(*W), x(3)), {}, ())),
        ("bias 0-d", lambda: ((x(*X), x(*W), torch.tensor(1.0)), {}, ())),
        ("bias 2-D", lambda: ((x(*X), x(*W), x(4, 1)), {}, ())),
        ("int tensors", lambda: ((torch.ones(X, dtype=torch.int32), torch.ones(W, dtype=torch.int32)), {}, ("may_refuse",))),
        ("bool tensors", lambda: ((torch.ones(X, dtype=torch.bool), torch.ones(W, dtype=torch.bool)), {}, ())),
        ("complex tensors", lambda: ((x(*X).to(torch.complex64), x(*W).to(torch.complex64)), {}, ("may_refuse",))),
        ("half on cpu", lambda: ((x(*X).half(), x(*W).half()), {}, ("may_refuse",))),
        ("mixed dtypes", lambda: ((x(*X), x(*W).double()), {}, ())),
        ("bias dtype differs", lambda: ((x(*X), x(*W), x(4).double()), {}, ())),
        ("mixed devices", lambda: ((x(*X), x(*W).to("meta")), {}, ("may_refuse",))),
        ("input not a tensor", lambda: (([[1.0]], x(*W)), {}, ())),
        ("weight None", lambda: ((x(*X), None), {}, ())),
        ("nested input", lambda: ((torch.nested.nested_tensor([x(3, 8, 8), x(3, 6, 6)]), x(*W)), {}, ())),
        ("sparse input", lambda: ((x(*X).to_sparse(), x(*W)), {}, ("may_refuse",))),
        ("meta tensors", lambda: ((torch.empty(X, device="meta"), torch.empty(W, device="meta")), {}, ())),
        ("nan input", lambda: ((torch.full(X, nan), x(*W)), {}, ())),
        ("inf weight with padding", lambda: ((x(*X), torch.full(W, inf)), dict(padding=1), ())),
        ("huge values", lambda: ((x(*X) * 1e38, x(*W) * 1e38), {}, ())),
        ("denormals", lambda: ((x(*X) * 1e-40, x(*W)), {}, ())),
        ("stride-0 expanded input", lambda: ((torch.randn(1, 3, 1, 1).expand(*X), x(*W)), {}, ())),
        ("negative-stride-free flip view", lambda: ((x(*X).flip(-1), x(*W)), {}, ())),
        ("channels_last weight only", lambda: ((x(*X), x(*W).contiguous(memory_format=torch.channels_last)), {}, ())),
        ("output of 4 TiB", lambda: ((torch.zeros(1, 1, 1, 1).expand(2**20, 1, 2**10, 2**10),
                                      torch.zeros(1024, 1, 1, 1)), {}, ("no_torch",))),
        ("output elements overflow int64", lambda: ((torch.zeros(1, 1, 1, 1).expand(2**20, 1, 2**20, 2**10),
                                                     torch.zeros(2**14, 1, 1, 1)), {}, ("no_torch",))),
        ("unknown algo", lambda: ((x(*X), x(*W)), dict(algo="winograd"), ("fastconv_only",))),
        ("unknown activation", lambda: ((x(*X), x(*W)), dict(activation="tanh"), ("fastconv_only",))),
        ("algo not a string", lambda: ((x(*X), x(*W)), dict(algo=3), ("fastconv_only",))),
    ]
    return cases


def _same_result(a, b) -> bool:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type == "meta" or a.numel() == 0:
        return True
    return torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-4, equal_nan=True)


def check_hostile(index: int) -> dict:
    import warnings

    import torch
    import torch.nn.functional as F

    import fastconv

    warnings.simplefilter("ignore")  # nested-tensor prototype warnings and the like
    name, make = _hostile()[index]
    args, kwargs, flags = make()
    ours = theirs = None
    try:
        ours = ("ok", fastconv.conv2d(*args, **kwargs))
    except Exception as e:
        ours = ("raise", e)
    if "fastconv_only" in flags:
        ok = ours[0] == "raise" and isinstance(ours[1], RuntimeError)
        return dict(ok=ok, name=name, detail=_describe(ours))
    if "no_torch" in flags:
        ok = ours[0] == "raise" and isinstance(ours[1], RuntimeError)
        return dict(ok=ok, name=name, detail=_describe(ours) + " (F.conv2d not run)")
    try:
        theirs = ("ok", F.conv2d(*args, **{k: v for k, v in kwargs.items()}))
    except Exception as e:
        theirs = ("raise", e)
    detail = f"fastconv {_describe(ours)}; F.conv2d {_describe(theirs)}"
    if ours[0] == "raise" and theirs[0] == "raise":
        # User code written for F.conv2d must catch ours with the same clause.
        ok = isinstance(ours[1], type(theirs[1]))
    elif ours[0] == "ok" and theirs[0] == "ok":
        ok = _same_result(ours[1], theirs[1])
    elif ours[0] == "raise":
        ok = "may_refuse" in flags
    else:
        ok = False
    return dict(ok=ok, name=name, detail=detail)


def _describe(outcome) -> str:
    kind, v = outcome
    if kind == "raise":
        return f"raised {type(v).__name__}: {str(v).splitlines()[0][:200] if str(v) else ''}"
    return f"returned {tuple(v.shape)} {v.dtype}"


# --- The worker and its supervisor ----------------------------------------------------------------
def _worker(kind: str, seed: int, indices: list[int]) -> None:
    for i in indices:
        print(f"BEGIN {i}", flush=True)
        try:
            res = check_random(random_case(seed, i)) if kind == "random" else check_hostile(i)
        except Exception:
            res = dict(ok=False, problems=["harness error: " + traceback.format_exc()[-500:]])
        print("RESULT " + json.dumps(res, default=str), flush=True)


def run_cases(kind: str, indices: list[int], seed: int = 0, timeout: float = 120.0,
              env: dict | None = None, log=print) -> list[dict]:
    """Run cases in worker subprocesses; one dict per case with 'ok' and, for a crash or a
    hang, 'crash'. A worker that dies is restarted after the case it died on."""
    results: list[dict] = []
    todo = list(indices)
    while todo:
        cmd = [sys.executable, "-m", "fastconv.testing.fuzz", "--worker", kind, "--seed",
               str(seed), "--indices", ",".join(map(str, todo))]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env if env is not None else os.environ.copy())
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, started = None, time.monotonic()
        while True:
            # The first case also waits for the worker's imports.
            if not sel.select(timeout=timeout + (30 if current is None else 0)):
                proc.kill()
                proc.wait()
                results.append(dict(index=current, ok=False, crash=f"hang: no result in {timeout:g} s"))
                break
            line = proc.stdout.readline()
            if not line:  # the worker exited
                rc = proc.wait()
                if current is not None:
                    err = proc.stderr.read()[-800:]
                    results.append(dict(index=current, ok=False,
                                        crash=f"worker died (exit status {rc}) running it: {err}"))
                elif rc != 0:
                    raise RuntimeError(f"fuzz worker failed to start: {proc.stderr.read()[-2000:]}")
                break
            if line.startswith("BEGIN "):
                current, started = int(line.split()[1]), time.monotonic()
            elif line.startswith("RESULT "):
                res = json.loads(line[7:])
                res["index"] = current
                results.append(res)
                if not res["ok"]:
                    log(f"{kind} case {current}: FAILED {res}")
                current = None
        proc.stdout.close()
        proc.stderr.close()
        done = {r["index"] for r in results}
        todo = [i for i in todo if i not in done]
        if results and results[-1].get("crash"):
            log(f"{kind} case {results[-1]['index']}: {results[-1]['crash']}")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastconv.testing.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="random configs to run (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first random config index")
    ap.add_argument("--hostile", action="store_true", help="also run the hostile-input list")
    ap.add_argument("--hostile-cases", default=None,
                    help="comma-separated hostile case indices (default: all)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case before a hang")
    ap.add_argument("--worker", choices=["random", "hostile"], help=argparse.SUPPRESS)
    ap.add_argument("--indices", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        # Through the imported module, not __main__: one module object, whatever runs it.
        from fastconv.testing import fuzz

        fuzz._worker(a.worker, a.seed, [int(i) for i in a.indices.split(",") if i])
        return 0
    failed = 0
    if a.n > 0:
        res = run_cases("random", list(range(a.start, a.start + a.n)), a.seed, a.timeout)
        bad = [r for r in res if not r["ok"]]
        runs = sum(len(r.get("algorithms", [])) for r in res)
        print(f"random: {len(res)} configs, {runs} algorithm runs, {len(bad)} failed (seed {a.seed})")
        failed += len(bad)
    if a.hostile or a.hostile_cases:
        names = [n for n, _ in _hostile()]
        idx = ([int(i) for i in a.hostile_cases.split(",")] if a.hostile_cases
               else list(range(len(names))))
        res = run_cases("hostile", idx, a.seed, a.timeout)
        for r in res:
            status = "ok  " if r["ok"] else "FAIL"
            print(f"{status} {names[r['index']]}: {r.get('detail') or r.get('crash') or r.get('problems')}")
        bad = [r for r in res if not r["ok"]]
        print(f"hostile: {len(res)} cases, {len(bad)} failed")
        failed += len(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
