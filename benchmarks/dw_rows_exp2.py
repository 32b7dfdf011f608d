"""GPU experiment, dwperf round 2: the production depthwise paths of this branch (rows
kernels raced by the tile tuner) against the same paths before the branch (kernels_old,
with the tiles the H200 run chose) and cuDNN, forward and backward, CUDA-graph medians.
    python dw_rows_exp2.py DIR     (DIR holds kernels/ and kernels_old/)
WARM=i/n: compile only (FASTCONV_TUNE=compile), the i-th of n shares of the variants."""
import math, os, sys, time
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else ".")
WARM = os.environ.get("WARM")
if WARM:
    os.environ["FASTCONV_TUNE"] = "compile"
import torch
import torch.nn.functional as F
from kernels import depthwise as D
from kernels_old import depthwise as O
from kernels._common import gpu_time as _gpu_time, TileTuner

torch.backends.cudnn.benchmark = True
T0 = time.time()
BUDGET = float(os.environ.get("BUDGET", "150"))
N = 32
SMOKE = os.environ.get("SMOKE")  # CPU dry run of this script under TRITON_INTERPRET=1
DEV = "cpu" if SMOKE else "cuda"
if WARM:
    WID, NW = map(int, WARM.split("/"))
if WARM or SMOKE:
    gpu_time = lambda fn: (fn(), 1.0)[1]
else:
    gpu_time = _gpu_time


def copy_bw():
    a = torch.empty(256 * 2**20, dtype=torch.uint8, device=DEV)
    b = torch.empty_like(a)
    return 2 * a.numel() / (gpu_time(lambda: b.copy_(a)) * 1e-3) / 1e9


BW = 1.0 if WARM or SMOKE else copy_bw()
print(f"copy {BW:.0f} GB/s", flush=True)
SUITES = {
    "mbv2": [(32, 112, 3, 1), (96, 112, 3, 2), (144, 56, 3, 1), (144, 56, 3, 2),
             (192, 28, 3, 1), (192, 28, 3, 2), (384, 14, 3, 1), (576, 14, 3, 1),
             (576, 14, 3, 2), (960, 7, 3, 1)],
    "cnxt": [(96, 56, 7, 1), (192, 28, 7, 1), (384, 14, 7, 1), (768, 7, 7, 1)],
    "rlk": [(512, 14, 27, 1), (1024, 7, 13, 1)],
}
ONLY = os.environ.get("ONLY")
TUNERS = [v for v in vars(D).values() if isinstance(v, TileTuner)]


def chosen(before):
    out = []
    for t in TUNERS:
        for k_ in t.memory.keys() - before.get(t.name, set()):
            c = {a: b for a, b in t.memory[k_].items() if a != "num_stages"}
            out.append(t.name.replace("dw_", "") + ":" + ",".join(f"{a}={b}" for a, b in c.items()))
    return " ".join(out)


def snap():
    return {t.name: set(t.memory) for t in TUNERS}


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


res = []  # (suite, dir, dtype, layout, cudnn, old, new, name)
vid = -1
hdr = f"{'case':36s} {'dir':3s} {'cudnn':>8s} {'old':>8s} {'new':>8s} {'old/c':>6s} {'new/c':>6s} {'%BW':>4s}  err / tiles"
print(hdr, flush=True)
for suite, layers in SUITES.items():
    tf32 = suite == "rlk"
    torch.backends.cudnn.allow_tf32 = tf32
    for C, H, R, st in layers:
        for dt in (torch.float32, torch.bfloat16):
            for cl in (False, True):
                dts = "bf16" if dt == torch.bfloat16 else ("tf32" if tf32 else "fp32")
                name = f"{suite} C{C} {H}^2 {R}x{R} s{st} {dts} {'nhwc' if cl else 'nchw'}"
                if ONLY and ONLY not in name:
                    continue
                vid += 1
                if WARM and vid % NW != WID:
                    continue
                if not WARM and time.time() - T0 > BUDGET:
                    if not res or res[-1] != "budget":
                        print("budget reached", flush=True)
                        res.append("budget")
                    continue
                if SMOKE:
                    N, C, H = 1, min(C, 4), min(H, 9)
                p = R // 2
                pad4, s2, d2 = (p, p, p, p), (st, st), (1, 1)
                x = torch.randn(N, C, H, H, device=DEV, dtype=dt)
                w = torch.randn(C, 1, R, R, device=DEV, dtype=dt) / R
                b = torch.randn(C, device=DEV, dtype=dt)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                    w = w.contiguous(memory_format=torch.channels_last)
                tol = 2e-2 if dt == torch.bfloat16 else (3e-3 if tf32 else 1e-4)
                ref = F.conv2d(x, w, b, st, p, 1, C)
                row = {}
                try:
                    tc = gpu_time(lambda: F.conv2d(x, w, b, st, p, 1, C))
                    to = gpu_time(lambda: O.conv2d(x, w, b, s2, pad4, d2, C))
                    before = snap()
                    y = D.conv2d(x, w, b, s2, pad4, d2, C)
                    e = rel(y, ref)
                    tn = gpu_time(lambda: D.conv2d(x, w, b, s2, pad4, d2, C))
                    ok = e < tol
                    byts = (x.numel() + ref.numel()) * x.element_size()
                    pbw = 100 * byts / (tn * 1e-3) / 1e9 / BW
                    print(f"{name:36s} fwd {tc*1e3:8.2f} {to*1e3:8.2f} {tn*1e3:8.2f} {tc/to:6.2f} "
                          f"{tc/tn:6.2f} {pbw:4.0f}  {'ok' if ok else 'WRONG'} {e:.1e} {chosen(before)}", flush=True)
                    res.append((suite, "fwd", dts, cl, tc, to, tn, name, ok))
                except Exception as ex:
                    print(f"{name:36s} fwd FAIL {repr(ex)[:150]}", flush=True)
                if suite == "rlk":
                    continue
                dy = torch.randn_like(ref)
                cb = lambda m: torch.ops.aten.convolution_backward(
                    dy, x, w, None, [st, st], [p, p], [1, 1], False, [0, 0], C, m)
                try:
                    gx_ref, gw_ref, _ = cb([True, True, False])
                    tc = gpu_time(lambda: cb([True, True, False]))
                    tci = gpu_time(lambda: cb([True, False, False]))
                    tcw = gpu_time(lambda: cb([False, True, False]))
                    toi = gpu_time(lambda: O.conv2d_grad_input(dy, w, x.shape, s2, pad4, d2, C))
                    tow = gpu_time(lambda: O.conv2d_grad_weight(dy, x, w.shape, s2, pad4, d2, C))
                    before = snap()
                    gx = D.conv2d_grad_input(dy, w, x.shape, s2, pad4, d2, C)
                    gw = D.conv2d_grad_weight(dy, x, w.shape, s2, pad4, d2, C)
                    ei, ew = rel(gx, gx_ref), rel(gw, gw_ref)
                    tni = gpu_time(lambda: D.conv2d_grad_input(dy, w, x.shape, s2, pad4, d2, C))
                    tnw = gpu_time(lambda: D.conv2d_grad_weight(dy, x, w.shape, s2, pad4, d2, C))
                    ok = ei < tol and ew < (tol * 5 if dt == torch.bfloat16 else tol)
                    byts = 4 * ref.numel() * x.element_size()
                    pbw = 100 * byts / ((tni + tnw) * 1e-3) / 1e9 / BW
                    print(f"{name:36s} bwd {tc*1e3:8.2f} {(toi+tow)*1e3:8.2f} {(tni+tnw)*1e3:8.2f} "
                          f"{tc/(toi+tow):6.2f} {tc/(tni+tnw):6.2f} {pbw:4.0f}  {'ok' if ok else 'WRONG'} "
                          f"{ei:.1e}/{ew:.1e} in c/o/n {tci*1e3:.1f}/{toi*1e3:.1f}/{tni*1e3:.1f} "
                          f"w c/o/n {tcw*1e3:.1f}/{tow*1e3:.1f}/{tnw*1e3:.1f} {chosen(before)}", flush=True)
                    res.append((suite, "bwd", dts, cl, tc, toi + tow, tni + tnw, name, ok))
                except Exception as ex:
                    print(f"{name:36s} bwd FAIL {repr(ex)[:150]}", flush=True)

if not WARM:
    def gm(v):
        return math.exp(sum(math.log(a) for a in v) / len(v)) if v else float("nan")
    print("\nsummary: geomean speedup vs cuDNN (same dtype/layout), old -> new")
    groups = {}
    res = [r for r in res if r != "budget"]
    for r in res:
        groups.setdefault((r[0], r[1], r[2], "nhwc" if r[3] else "nchw"), []).append(r)
    for g, rs in groups.items():
        print(f"  {' '.join(g):24s} n={len(rs):2d}  old {gm([r[4]/r[5] for r in rs]):5.2f}  "
              f"new {gm([r[4]/r[6] for r in rs]):5.2f}  (min {min(r[4]/r[6] for r in rs):.2f})")
    for d in ("fwd", "bwd"):
        rs = [r for r in res if r[1] == d and r[0] != "rlk"]
        if rs:
            print(f"  all depthwise 3x3/7x7 {d}: n={len(rs)} old {gm([r[4]/r[5] for r in rs]):.2f} "
                  f"new {gm([r[4]/r[6] for r in rs]):.2f}; nchw {gm([r[4]/r[6] for r in rs if not r[3]]):.2f} "
                  f"nhwc {gm([r[4]/r[6] for r in rs if r[3]]):.2f}")
    # RepLKNet: ours (best layout) vs cuDNN's best layout
    best = {}
    for r in res:
        if r[0] == "rlk":
            key = (r[7].split(" tf32")[0].split(" bf16")[0], r[2])
            c, o, n_ = best.get(key, (1e9, 1e9, 1e9))
            best[key] = (min(c, r[4]), min(o, r[5]), min(n_, r[6]))
    for k_, (c, o, n_) in best.items():
        print(f"  {k_[0]} {k_[1]}: cuDNN best {c*1e3:.1f} us, old best {o*1e3:.1f} ({c/o:.2f}x), "
              f"new best {n_*1e3:.1f} ({c/n_:.2f}x)")
    print("all correct" if all(r[8] for r in res) else "SOME WRONG")
print(f"done in {time.time() - T0:.0f} s")
