"""igemm round experiment: new forward kernel (flat K loop, GROUP_M order, per-width tiles,
TMA plain GEMM, split-K) vs the committed kernel (kernels_old, with the tiles the last
bench run chose) vs cuDNN, on representative ResNet-50 layers, batch 32, channels_last,
bf16 and fp32+TF32. Then the (unchanged) igemm backward vs aten.convolution_backward.

Phase 1 compiles every candidate in parallel worker processes (shared TRITON_CACHE_DIR);
phase 2 checks correctness (vs cuDNN, poisoned outputs) and times with CUDA graphs.
"""
import json
import math
import os
import sys
import tempfile
import time
import traceback

T0 = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if "IGEMM_TMP" not in os.environ:
    os.environ["IGEMM_TMP"] = tempfile.mkdtemp(prefix="igemm_exp_")
TMP = os.environ["IGEMM_TMP"]
os.environ["TRITON_CACHE_DIR"] = os.path.join(TMP, "triton")
os.environ["FASTCONV_CACHE_DIR"] = os.path.join(TMP, "fc")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

N = 32
DRY = os.environ.get("IGEMM_DRYRUN") == "1"  # CPU + interpreter smoke test of this script
DEV = "cpu" if DRY else "cuda"
RESNET50 = [
    (3, 64, 224, 7, 2), (64, 64, 56, 1, 1), (64, 64, 56, 3, 1), (64, 256, 56, 1, 1),
    (256, 64, 56, 1, 1), (256, 128, 56, 1, 1), (128, 128, 56, 3, 2), (128, 512, 28, 1, 1),
    (256, 512, 56, 1, 2), (512, 128, 28, 1, 1), (128, 128, 28, 3, 1), (512, 256, 28, 1, 1),
    (256, 256, 28, 3, 2), (256, 1024, 14, 1, 1), (512, 1024, 28, 1, 2), (1024, 256, 14, 1, 1),
    (256, 256, 14, 3, 1), (1024, 512, 14, 1, 1), (512, 512, 14, 3, 2), (512, 2048, 7, 1, 1),
    (1024, 2048, 14, 1, 2), (2048, 512, 7, 1, 1), (512, 512, 7, 3, 1)]
LAYERS = [(f"{r}x{r}{'s2' if st == 2 else ''}_{c}>{k}@{h}", c, k, h, r, st)
          for c, k, h, r, st in RESNET50]
DTYPES = [("bf16", torch.bfloat16, False), ("tf32", torch.float32, True)]
if DRY:
    N = 1
    LAYERS = [(n, c, k, max(3, h // 16), r, s) for n, c, k, h, r, s in LAYERS]
    LAYERS = [LAYERS[i] for i in (0, 2, 3, 6, 22)]
    BWD_LAYERS_DRY = [1, 2]
BWD_LAYERS = [2, 16, 3, 15, 6, 22]  # indices into LAYERS
if DRY:
    BWD_LAYERS = BWD_LAYERS_DRY
TOL = {"bf16": 2e-2, "tf32": 1e-2}
COMPILE_DEADLINE = 75  # s since start: stop waiting for compiles
TIME_DEADLINE = 158    # s since start: stop timing, print the summary


def T(m, n, k, w, st, **kw):
    return dict(kw, BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, num_warps=w, num_stages=st)


def candidates(w16, kred, c, r, st):
    """Round-2 sweep: flat vs nested pointer loops, split-K, TMA (+split), per width."""
    k2 = 64 if w16 else 32   # the "wide" BLOCK_K
    k1 = 32                  # the narrow one (the old kernel's favourite)
    ptr = [T(128, 128, k1, 8, 3), T(128, 64, k1, 4, 4), T(64, 128, k1, 4, 4), T(64, 64, k1, 4, 3),
           T(128, 128, k2, 8, 3), T(256, 128, k2, 8, 3), T(128, 64, k2, 4, 3),
           T(64, 64, k2, 4, 3)]
    out = []
    for p in ptr:
        out.append(p)
        if (r > 1 or st > 1) and c % p["BLOCK_K"] == 0:  # NESTED changes nothing elsewhere
            out.append(dict(p, NESTED=True))
    out += [T(64, 128, k1, 4, 4, SPLIT=True), T(128, 64, k1, 4, 4, SPLIT=True),
            T(64, 128, k2, 4, 4, SPLIT=True), T(128, 128, k1, 8, 3, SPLIT=True)]
    tma = [T(128, 128, k2, 8, 4), T(128, 64, k2, 4, 4), T(64, 64, k2, 4, 4),
           T(128, 128, k2, 4, 4), T(128, 128, k1, 8, 4), T(64, 128, k2, 4, 4),
           T(128, 64, k1, 4, 4)]
    if w16:
        tma.append(T(128, 256, k2, 8, 3))
    if kred <= 2 * k2:
        tma.append(T(128, 64, k2, 4, 2))
        out.append(T(128, 64, k2, 4, 2))
    out += [dict(t, KIND="tma") for t in tma]
    out += [dict(t, KIND="tma", SPLIT=True) for t in (T(128, 128, k2, 8, 4), T(128, 64, k2, 4, 4),
                                                      T(64, 128, k2, 4, 4))]
    seen, uniq = set(), []
    for cfg in out:
        key = tuple(sorted(cfg.items()))
        if key not in seen and cfg["BLOCK_N"] >= 64:
            seen.add(key)
            uniq.append(cfg)
    return uniq


def make(li, di):
    name, c, k, h, r, s = LAYERS[li]
    dname, dt, tf32 = DTYPES[di]
    g = torch.Generator(device=DEV).manual_seed(li * 7 + di)
    x = torch.randn(N, c, h, h, device=DEV, generator=g).to(dt).contiguous(
        memory_format=torch.channels_last)
    w = (torch.randn(k, c, r, r, device=DEV, generator=g) / (c * r * r) ** 0.5).to(dt)
    w = w.contiguous(memory_format=torch.channels_last)
    return x, w, dict(stride=s, padding=r // 2)


def conv_args(kw):
    st, p = kw["stride"], kw["padding"]
    return [st, st], [p, p, p, p], [1, 1], 1


class Probe(Exception):
    pass


def forced(mod, cfg):
    """Make module `mod` use tile cfg for the next plan (no tuning); returns prune(cfg)."""
    seen = {}

    def pick(tuner, key, t, launch, prune):
        seen["ok"] = prune(cfg) if prune else True
        seen["key"] = key
        return cfg
    mod._pick = pick
    mod._fwd_plans.clear()
    return seen


def run_new(x, w, kw, cfg):
    from kernels import igemm
    st, pad, dil, g = conv_args(kw)
    seen = forced(igemm, cfg)
    y = igemm.conv2d(x, w, None, st, pad, dil, g)
    return y, seen


def prune_ok(x, w, kw, cfg):
    from kernels import igemm
    st, pad, dil, g = conv_args(kw)

    def pick(tuner, key, t, launch, prune):
        raise Probe(prune(cfg))
    igemm._pick = pick
    igemm._fwd_plans.clear()
    try:
        igemm.conv2d(x, w, None, st, pad, dil, g)
    except Probe as e:
        return e.args[0]
    return False


OLD_TILES = json.load(open(os.path.join(HERE, "old_tiles.json")))


def run_old(x, w, kw):
    from kernels_old import igemm as old
    st, pad, dil, g = conv_args(kw)
    old._fwd_plans.clear()
    chosen = {}

    def pick(tuner, key, t, launch, prune):
        chosen["cfg"] = OLD_TILES.get(key) or dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32,
                                                  num_warps=8, num_stages=3)
        return chosen["cfg"]
    old._pick = pick
    return old.conv2d(x, w, None, st, pad, dil, g), chosen


# GPU correctness of every tile kind on odd shapes, with bias + ReLU (run in the workers)
CHECK_SHAPES = [  # x, w, stride, padding, dilation, BLOCK_K (None: per dtype)
    ((2, 48, 9, 11), (40, 48, 3, 3), 1, 1, 1, 32), ((2, 48, 9, 11), (40, 48, 3, 3), 1, 1, 1, 16),
    ((1, 64, 7, 7), (24, 64, 1, 1), 1, 0, 1, None), ((3, 32, 6, 5), (64, 32, 3, 3), 1, 2, 2, None),
    ((2, 64, 10, 9), (72, 64, 3, 3), 2, 1, 1, None)]
CHECK_KINDS = [dict(), dict(NESTED=True), dict(SPLIT=True), dict(KIND="tma"),
               dict(KIND="tma", SPLIT=True)]
CHECK_DTYPES = [torch.bfloat16, torch.float32]


def check(ci, ki, dti):
    from kernels import igemm
    xs, ws, st, pad, dil, bk = CHECK_SHAPES[ci]
    dt = CHECK_DTYPES[dti]
    torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator(device=DEV).manual_seed(ci * 100 + ki * 10 + dti)
    x = torch.randn(xs, device=DEV, generator=g).to(dt).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(ws, device=DEV, generator=g) / (ws[1] * 9) ** 0.5).to(dt)
    w = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(ws[0], device=DEV, generator=g).to(dt)
    bk = bk or (32 if dt == torch.float32 else 64)
    cfg = dict(CHECK_KINDS[ki], BLOCK_M=64, BLOCK_N=64, BLOCK_K=bk, num_warps=4, num_stages=3)
    sms = igemm._num_sms
    igemm._num_sms = lambda d: 1000  # make split-K split on these small shapes
    forced(igemm, cfg)
    os.environ["FASTCONV_POISON"] = "1"
    try:
        y = igemm.conv2d(x, w, b, [st, st], [pad] * 4, [dil, dil], 1, "relu")
    finally:
        os.environ.pop("FASTCONV_POISON")
        igemm._num_sms = sms
    ref = F.relu(F.conv2d(x.double(), w.double(), b.double(), st, pad, dil))
    e = rel(y, ref)
    tol = 1e-5 if dt == torch.float32 else 1e-2
    if not (e < tol) or torch.isnan(y).any():
        return f"FAIL err={e:.2e}"
    return None


_CACHE = {}
ORIG_PICK = None


def _orig_pick():
    global ORIG_PICK
    from kernels import igemm
    if ORIG_PICK is None:
        ORIG_PICK = igemm._pick
    return ORIG_PICK


_orig_pick()


def job(args):
    """Worker: compile (by running once) one candidate of one case."""
    kind, li, di, cfg = args
    try:
        torch.backends.cudnn.allow_tf32 = DTYPES[di][2]
        if kind == "check":
            return (args, check(*cfg))
        if (li, di) not in _CACHE:
            _CACHE.clear()
            _CACHE[(li, di)] = make(li, di)
        x, w, kw = _CACHE[(li, di)]
        if kind == "new":
            run_new(x, w, kw, cfg)
        elif kind == "old":
            run_old(x, w, kw)
        elif kind == "bwd":
            os.environ["FASTCONV_TUNE"] = "compile"
            from kernels import igemm
            igemm._pick = ORIG_PICK
            st, pad, dil, g = conv_args(kw)
            y = F.conv2d(x, w, None, kw["stride"], kw["padding"])
            dy = torch.randn_like(y)
            if cfg == "gi":
                igemm.conv2d_grad_input(dy, w, list(x.shape), st, pad, dil, g)
            else:
                igemm.conv2d_grad_weight(dy, x, list(w.shape), st, pad, dil, g)
        if not DRY:
            torch.cuda.synchronize()
        return (args, None)
    except Exception as e:
        return (args, repr(e)[:160])


GRAPH_CALLS = 20


def graph_time(fn, reps=10):
    if DRY:
        fn()
        return 1.0
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(GRAPH_CALLS):
            fn()
    g.replay()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / GRAPH_CALLS)
    del g
    return sorted(ts)[len(ts) // 2]


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def short(cfg):
    s = f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}w{cfg['num_warps']}s{cfg['num_stages']}"
    if cfg.get("KIND"):
        s = cfg["KIND"] + ":" + s
    if cfg.get("SPLIT"):
        s = "split:" + s
    if cfg.get("NESTED"):
        s = "nest:" + s
    return s


def gm(v):
    v = [x for x in v if x and x > 0]
    return math.exp(sum(map(math.log, v)) / len(v)) if v else float("nan")


def main():
    import multiprocessing as mp
    torch.backends.cudnn.benchmark = True
    print(f"device {torch.cuda.get_device_name() if not DRY else 'cpu'} torch {torch.__version__}",
          flush=True)
    import triton
    print(f"triton {triton.__version__}", flush=True)
    # -- phase 0: candidate lists (prune runs host-side only)
    jobs, cand = [], {}
    for li in range(len(LAYERS)):
        for di in range(len(DTYPES)):
            torch.backends.cudnn.allow_tf32 = DTYPES[di][2]
            x, w, kw = make(li, di)
            kred = LAYERS[li][1] * LAYERS[li][4] ** 2
            cs = [c for c in candidates(DTYPES[di][1] == torch.bfloat16, kred, LAYERS[li][1],
                                        LAYERS[li][4], LAYERS[li][5])
                  if prune_ok(x, w, kw, c)]
            cand[(li, di)] = cs
            jobs += [("new", li, di, c) for c in cs]
            jobs.append(("old", li, di, None))
            del x, w
    bwd_jobs = [("bwd", li, 0, op) for li in BWD_LAYERS for op in ("gi", "gw")]
    bwd_jobs += [("bwd", li, 1, op) for li in BWD_LAYERS for op in ("gi", "gw")]
    check_jobs = [("check", 0, 0, (ci, ki, dti)) for ci in range(len(CHECK_SHAPES))
                  for ki in range(len(CHECK_KINDS)) for dti in range(len(CHECK_DTYPES))]
    all_jobs = bwd_jobs + check_jobs + jobs
    print(f"{len(jobs)} fwd compile jobs + {len(bwd_jobs)} bwd; t={time.time()-T0:.0f}s",
          flush=True)
    # -- phase 1: parallel compile
    done, failed = set(), {}
    ctx = mp.get_context("spawn")
    nproc = max(2, min(15, (os.cpu_count() or 4) - 1))
    pool = ctx.Pool(nproc)
    try:
        it = pool.imap_unordered(job, all_jobs)
        for _ in range(len(all_jobs)):
            remaining = COMPILE_DEADLINE - (time.time() - T0)
            if remaining <= 0:
                print("compile deadline hit", flush=True)
                break
            try:
                args, err = it.next(timeout=remaining)
            except mp.TimeoutError:
                print("compile deadline hit", flush=True)
                break
            key = (args[0], args[1], args[2], json.dumps(args[3], sort_keys=True))
            if err:
                failed[key] = err
            else:
                done.add(key)
    finally:
        pool.terminate()
    print(f"compiled {len(done)}, failed {len(failed)}; t={time.time()-T0:.0f}s", flush=True)
    nchk = sum(1 for k in done if k[0] == "check")
    print(f"GPUCHECK {nchk}/{len(check_jobs)} passed (tile kinds x odd shapes x dtypes, bias+relu)",
          flush=True)
    for k, e in list(failed.items()):
        if k[0] == "check":
            print("  GPUCHECK", k[3], e, flush=True)
    for k, e in [kv for kv in failed.items() if kv[0][0] != "check"][:8]:
        print("  fail", k[0], LAYERS[k[1]][0], DTYPES[k[2]][0], k[3], e, flush=True)

    # -- phase 2: forward timing
    from kernels import igemm
    rows = []
    print(f"{'layer':18s} {'dt':4s} {'cudnn':>7s} {'old':>7s} {'r_old':>5s} {'new':>7s} "
          f"{'r_new':>5s} {'flat':>7s} {'nest':>7s} {'tma':>7s} {'split':>7s} {'mm':>7s}  best cfg",
          flush=True)
    stop = False
    for li, (lname, c, k, h, r, s) in enumerate(LAYERS):
        for di, (dname, dt, tf32) in enumerate(DTYPES):
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            if time.time() - T0 > TIME_DEADLINE - 22:
                stop = True
                break
            x, w, kw = make(li, di)
            try:
                ref = F.conv2d(x, w, None, **kw)
                t_cudnn = graph_time(lambda: F.conv2d(x, w, None, **kw))
                t_old = None
                if ("old", li, di, "null") in done:
                    os.environ["FASTCONV_POISON"] = "1"
                    yo, ch = run_old(x, w, kw)
                    os.environ.pop("FASTCONV_POISON")
                    if rel(yo, ref) < TOL[dname] and not torch.isnan(yo).any():
                        from kernels_old import igemm as old
                        st, pad, dil, g = conv_args(kw)
                        t_old = graph_time(lambda: old.conv2d(x, w, None, st, pad, dil, g))
                    else:
                        print(f"  old WRONG {lname} {rel(yo, ref):.2e}", flush=True)
                res = []
                for cfg in cand[(li, di)]:
                    if ("new", li, di, json.dumps(cfg, sort_keys=True)) not in done:
                        continue
                    os.environ["FASTCONV_POISON"] = "1"
                    y, seen = run_new(x, w, kw, cfg)
                    os.environ.pop("FASTCONV_POISON")
                    e = rel(y, ref)
                    if not (e < TOL[dname]) or torch.isnan(y).any():
                        print(f"  WRONG {lname} {dname} {short(cfg)} err={e:.2e}", flush=True)
                        continue
                    st, pad, dil, g = conv_args(kw)
                    forced(igemm, cfg)
                    igemm.conv2d(x, w, None, st, pad, dil, g)  # plan built
                    t = graph_time(lambda: igemm.conv2d(x, w, None, st, pad, dil, g))
                    res.append((t, cfg))
                t_mm = None
                if r == 1 and s == 1:
                    a2 = x.permute(0, 2, 3, 1).reshape(-1, c)
                    b2 = w.reshape(k, c).t()
                    t_mm = graph_time(lambda: torch.mm(a2, b2))
                res.sort(key=lambda z: z[0])

                def best(pred):
                    v = [t for t, cfg in res if pred(cfg)]
                    return min(v) if v else None
                t_new = res[0][0] if res else None
                t_ptr = best(lambda c: not c.get("KIND") and not c.get("SPLIT")
                             and not c.get("NESTED"))
                t_nest = best(lambda c: c.get("NESTED"))
                t_tma = best(lambda c: c.get("KIND") == "tma")
                t_split = best(lambda c: c.get("SPLIT"))
                f = lambda v: f"{v:7.2f}" if v else "      -"  # noqa: E731
                rr = lambda v: f"{t_cudnn / v:5.2f}" if v else "    -"  # noqa: E731
                print(f"{lname:18s} {dname:4s} {t_cudnn:7.2f} {f(t_old)} {rr(t_old)} {f(t_new)} "
                      f"{rr(t_new)} {f(t_ptr)} {f(t_nest)} {f(t_tma)} {f(t_split)} {f(t_mm)}  "
                      f"{short(res[0][1]) if res else '-'}", flush=True)
                print("    top: " + ", ".join(f"{short(cfg)}={t:.1f}" for t, cfg in res[:6]),
                      flush=True)
                rows.append(dict(layer=lname, dt=dname, cudnn=t_cudnn, old=t_old, new=t_new,
                                 ptr=t_ptr, nest=t_nest, tma=t_tma, split=t_split, mm=t_mm,
                                 all=[(round(t, 2), short(cfg)) for t, cfg in res]))
            except Exception:
                traceback.print_exc()
            del x, w
        if stop:
            print("time deadline: forward timing cut short", flush=True)
            break
    for dname in ("bf16", "tf32"):
        rs = [r_ for r_ in rows if r_["dt"] == dname]
        if not rs:
            continue
        print(f"GEOMEAN speedup vs cuDNN {dname} ({len(rs)} layers): "
              f"old {gm([r_['cudnn'] / r_['old'] for r_ in rs if r_['old']]):.3f}  "
              f"new {gm([r_['cudnn'] / r_['new'] for r_ in rs if r_['new']]):.3f}  "
              f"flat-only {gm([r_['cudnn'] / r_['ptr'] for r_ in rs if r_['ptr']]):.3f}  "
              f"nest-only {gm([r_['cudnn'] / r_['nest'] for r_ in rs if r_['nest']]):.3f}  "
              f"no-split {gm([r_['cudnn'] / min(v for v in (r_['ptr'], r_['tma']) if v) for r_ in rs if r_['ptr'] or r_['tma']]):.3f}",
              flush=True)
    with open(os.path.join(os.environ.get("OUT", TMP), "igemm_rows.json"), "w") as fh:
        json.dump(rows, fh)
    print("ROWS " + json.dumps(rows), flush=True)

    # -- phase 3: backward (current igemm grad ops, tuned by their own tuner) vs cuDNN
    print(f"backward: t={time.time()-T0:.0f}s", flush=True)
    os.environ["FASTCONV_TUNE"] = "1"
    igemm._pick = ORIG_PICK
    for di in (0, 1):
        dname, dt, tf32 = DTYPES[di]
        torch.backends.cudnn.allow_tf32 = tf32
        for li in BWD_LAYERS:
            if time.time() - T0 > TIME_DEADLINE:
                print("time deadline: backward cut short", flush=True)
                return
            try:
                x, w, kw = make(li, di)
                st, pad, dil, g = conv_args(kw)
                y = F.conv2d(x, w, None, **kw)
                dy = torch.randn_like(y)
                gi = lambda: igemm.conv2d_grad_input(dy, w, list(x.shape), st, pad, dil, g)  # noqa
                gw = lambda: igemm.conv2d_grad_weight(dy, x, list(w.shape), st, pad, dil, g)  # noqa
                ref = torch.ops.aten.convolution_backward(dy, x, w, None, st, pad[:2], dil, False,
                                                          [0, 0], g, [True, True, False])
                e1, e2 = rel(gi(), ref[0]), rel(gw(), ref[1])
                t_gi, t_gw = graph_time(gi), graph_time(gw)
                t_ref = graph_time(lambda: torch.ops.aten.convolution_backward(
                    dy, x, w, None, st, pad[:2], dil, False, [0, 0], g, [True, True, False]))
                t_ri = graph_time(lambda: torch.ops.aten.convolution_backward(
                    dy, x, w, None, st, pad[:2], dil, False, [0, 0], g, [True, False, False]))
                print(f"BWD {LAYERS[li][0]:18s} {dname} gi {t_gi:7.2f} gw {t_gw:7.2f} "
                      f"sum {t_gi + t_gw:7.2f} | cudnn both {t_ref:7.2f} (dx only {t_ri:7.2f}) "
                      f"ratio {t_ref / (t_gi + t_gw):5.2f}  err {e1:.1e} {e2:.1e}", flush=True)
            except Exception:
                traceback.print_exc()
    for name, tuner in (("gi", igemm._bwd_input_tuner), ("gw", igemm._bwd_weight_tuner)):
        for key, cfg in tuner.memory.items():
            print(f"  bwd tile {name} {key.split('|', 3)[-1][:60]} {short(cfg)}", flush=True)
    print(f"done t={time.time()-T0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
