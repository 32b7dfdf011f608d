"""GPU experiment (dwperf round): the row-reuse depthwise kernel vs the current tap-loop
kernel vs cuDNN, forward and grad_input, CUDA-graph medians. Standalone: imports kernels/
from the directory given as argv[1] (no C++ extension needed)."""
import os, sys, time, json
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else ".")
import torch
import torch.nn.functional as F
import triton
from kernels import depthwise as D
from kernels._common import gpu_time

torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = False
T0 = time.time()
BUDGET = float(os.environ.get("BUDGET", "150"))
dev = "cpu" if os.environ.get("SMOKE") else "cuda"   # SMOKE: interpreter dry run of this script
N = 1 if os.environ.get("SMOKE") else 32

def copy_bw():
    a = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev); b = torch.empty_like(a)
    t = gpu_time(lambda: b.copy_(a))
    return 2 * a.numel() / (t * 1e-3) / 1e9

# (suite, C, H, R, stride)
CASES = [("mbv2", 32, 112, 3, 1), ("mbv2", 144, 56, 3, 1), ("mbv2", 144, 56, 3, 2),
         ("mbv2", 576, 14, 3, 1), ("cnxt", 96, 56, 7, 1), ("cnxt", 384, 14, 7, 1),
         ("rlk", 512, 14, 27, 1), ("rlk", 1024, 7, 13, 1)]
# WARM=i/n: only compile (every launch once, no timing, no cuDNN) the i-th of n shares
# of the variants, in parallel processes sharing Triton's on-disk cache.
WARM = os.environ.get("WARM")
if WARM:
    WID, NW = map(int, WARM.split("/"))
    gpu_time = lambda fn: (fn(), 1.0)[1]
BW = 1.0 if WARM else copy_bw()
print(f"copy {BW:.0f} GB/s", flush=True)

ONLY = os.environ.get("ONLY")

def rows_cfgs(cl, dtype, wo, k, r):
    small = wo <= 8
    if cl:
        bc = 128 if dtype == torch.bfloat16 else 64
        c = [dict(ROWS=8, BLOCK_W=8, BLOCK_C=bc, num_warps=4),
             dict(ROWS=4, BLOCK_W=16 if wo > 8 else 8, BLOCK_C=bc // 2, num_warps=4 if wo > 8 else 2)]
        if r > 7:
            c = [dict(ROWS=8, BLOCK_W=16 if wo > 8 else 8, BLOCK_C=32, num_warps=4 if wo > 8 else 2),
                 dict(ROWS=4, BLOCK_W=16 if wo > 8 else 8, BLOCK_C=32, num_warps=2)]
    else:
        if wo >= 56:
            c = [dict(ROWS=8, BLOCK_W=64, BLOCK_C=1, num_warps=2),
                 dict(ROWS=4, BLOCK_W=64, BLOCK_C=2, num_warps=4)]
        elif wo > 8:
            c = [dict(ROWS=8, BLOCK_W=16, BLOCK_C=4, num_warps=2),
                 dict(ROWS=4, BLOCK_W=16, BLOCK_C=8, num_warps=4)]
        else:
            c = [dict(ROWS=8, BLOCK_W=8, BLOCK_C=8, num_warps=2),
                 dict(ROWS=8, BLOCK_W=8, BLOCK_C=4, num_warps=1)]
    return c

SMS = 132 if os.environ.get("SMOKE") else torch.cuda.get_device_properties(0).multi_processor_count


def wgrad_cfgs(cl, dtype, wo, r):
    if cl:
        bc = 128 if dtype == torch.bfloat16 else 64
        if r <= 3:
            return [dict(ROWS=8, BLOCK_W=4, BLOCK_C=bc, num_warps=4, P=2),
                    dict(ROWS=8, BLOCK_W=4, BLOCK_C=bc, num_warps=4, P=4),
                    dict(ROWS=4, BLOCK_W=8, BLOCK_C=bc // 2, num_warps=4, P=4)]
        return [dict(ROWS=4, BLOCK_W=2, BLOCK_C=64, num_warps=4, P=2),
                dict(ROWS=8, BLOCK_W=2, BLOCK_C=64, num_warps=4, P=4)]
    if wo >= 56:
        return [dict(ROWS=8, BLOCK_W=64, BLOCK_C=1, num_warps=2, P=4),
                dict(ROWS=4, BLOCK_W=32, BLOCK_C=1, num_warps=1, P=8)]
    if wo > 8:
        return [dict(ROWS=8, BLOCK_W=16, BLOCK_C=4, num_warps=2, P=4),
                dict(ROWS=4, BLOCK_W=16, BLOCK_C=2, num_warps=1, P=8)]
    return [dict(ROWS=8, BLOCK_W=8, BLOCK_C=8, num_warps=2, P=4),
            dict(ROWS=8, BLOCK_W=8, BLOCK_C=4, num_warps=1, P=8)]


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()

def fmt(us):
    return f"{us:8.2f}"

rows_out = []
VID = -1
print(f"{'case':34s} {'dir':4s} {'cudnn':>8s} {'old':>8s} {'rows':>8s} {'old/c':>6s} {'rows/c':>6s} {'%BW':>5s}  best_cfg", flush=True)
for suite, C, H, R, st in CASES:
    for dtype in (torch.float32, torch.bfloat16):
        for cl in (False, True):
            if time.time() - T0 > BUDGET:
                print("budget reached", flush=True); sys.exit(0)
            name = f"{suite} C{C} {H}^2 {R}x{R} s{st} {'bf16' if dtype == torch.bfloat16 else 'fp32'} {'nhwc' if cl else 'nchw'}"
            if ONLY and ONLY not in name:
                continue
            VID += 1
            if WARM and VID % NW != WID:
                continue
            if os.environ.get("SMOKE"):
                C, H = min(C, 4), min(H, 9)
            p = R // 2
            x = torch.randn(N, C, H, H, device=dev, dtype=dtype)
            w = torch.randn(C, 1, R, R, device=dev, dtype=dtype) / R
            b = torch.randn(C, device=dev, dtype=dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
                w = w.contiguous(memory_format=torch.channels_last)
            ref = F.conv2d(x, w, b, st, p, 1, C)
            tc = gpu_time(lambda: F.conv2d(x, w, b, st, p, 1, C))
            pad4 = (p, p, p, p)
            try:
                y_old = D.conv2d(x, w, b, (st, st), pad4, (1, 1), C)
                e_old = rel(y_old, ref)
                to = gpu_time(lambda: D.conv2d(x, w, b, (st, st), pad4, (1, 1), C))
            except Exception as e:
                to, e_old = float("nan"), repr(e)[:40]
            ho = ref.shape[2]
            best = (float("inf"), None)
            errs = []
            for cfg in rows_cfgs(cl, dtype, ho, C, R):
                meta = {k: v for k, v in cfg.items() if k != "num_warps"}
                opts = dict(num_warps=cfg["num_warps"], num_stages=1)
                y = torch.full_like(ref, float("nan"))
                try:
                    D._launch_rows(meta, opts, x, w, b, y, (st, st), pad4, (1, 1), True, 0, False)
                except Exception as e:
                    print("  rows fail", cfg, repr(e)[:100], flush=True); continue
                err = rel(y, ref)
                errs.append(err)
                if not err < (1e-4 if dtype == torch.float32 else 2e-2):
                    print("  WRONG", cfg, err, flush=True); continue
                t = gpu_time(lambda: D._launch_rows(meta, opts, x, w, b, y, (st, st), pad4, (1, 1), True, 0, False))
                if t < best[0]:
                    best = (t, cfg)
            tr = best[0]
            byts = (x.numel() + ref.numel()) * x.element_size()
            pbw = 100 * byts / (tr * 1e-3) / 1e9 / BW if tr < float("inf") else 0
            print(f"{name:34s} fwd  {fmt(tc*1e3)} {fmt(to*1e3)} {fmt(tr*1e3)} {tc/to:6.2f} {tc/tr:6.2f} {pbw:5.0f}  {best[1]} err_old={e_old if isinstance(e_old,str) else f'{e_old:.1e}'} err={max(errs) if errs else -1:.1e}", flush=True)
            rows_out.append(dict(name=name, dir="fwd", cudnn=tc, old=to, rows=tr, cfg=best[1]))
            # ---- backward (stride 1, 3x3 / 7x7 only): grad_input via rows kernel with the flipped kernel
            if R > 7 or os.environ.get("NOBWD"):
                continue
            dy = torch.randn_like(ref)
            cb_in = gpu_time(lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [st, st], [p, p], [1, 1], False, [0, 0], C, [True, False, False]))
            cb_w = gpu_time(lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [st, st], [p, p], [1, 1], False, [0, 0], C, [False, True, False]))
            cb = gpu_time(lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [st, st], [p, p], [1, 1], False, [0, 0], C, [True, True, False]))
            gx_ref, gw_ref, _ = torch.ops.aten.convolution_backward(dy, x, w, None, [st, st], [p, p], [1, 1], False, [0, 0], C, [True, True, False])
            try:
                ob_in = gpu_time(lambda: D.conv2d_grad_input(dy, w, x.shape, (st, st), pad4, (1, 1), C))
                ob_w = gpu_time(lambda: D.conv2d_grad_weight(dy, x, w.shape, (st, st), pad4, (1, 1), C))
            except Exception as e:
                ob_in = ob_w = float("nan"); print("  old bwd fail", repr(e)[:100])
            rb_in = float("nan"); bcfg = None
            if st == 1:
                wf = w[:, :, R - 1:, R - 1:]
                best = (float("inf"), None)
                for cfg in rows_cfgs(cl, dtype, H, C, R):
                    meta = {k: v for k, v in cfg.items() if k != "num_warps"}
                    opts = dict(num_warps=cfg["num_warps"], num_stages=1)
                    gx = torch.full_like(x, float("nan"))
                    def go():
                        n_, c_, h_, wd_ = dy.shape
                        tiles_w = triton.cdiv(H, meta["BLOCK_W"]); tiles_hw = triton.cdiv(H, meta["ROWS"]) * tiles_w
                        grid = (N * tiles_hw, triton.cdiv(C, meta["BLOCK_C"]))
                        D._dw_fwd_rows_kernel[grid](dy, wf, wf, gx, H, H, H, H, C, 1, tiles_w, tiles_hw,
                            *dy.stride(), w.stride(0), -w.stride(2), -w.stride(3), *gx.stride(),
                            1, R - 1 - p, R - 1 - p, 1, SH=1, DH=1, R=R, S=R, HAS_BIAS=False, ACT=0,
                            NEED_I64=False, ACC_DTYPE=triton.language.float32, **meta, **opts)
                    try:
                        go()
                    except Exception as e:
                        print("  rows bwd fail", cfg, repr(e)[:100], flush=True); continue
                    err = rel(gx, gx_ref)
                    if not err < (1e-4 if dtype == torch.float32 else 2e-2):
                        print("  WRONG bwd", cfg, err, flush=True); continue
                    t = gpu_time(go)
                    if t < best[0]:
                        best = (t, cfg)
                rb_in, bcfg = best
            # grad_weight, rows kernel + fixed-order reduction (what the op would run)
            best = (float("inf"), None)
            for cfg in wgrad_cfgs(cl, dtype, ho, R):
                meta = {k_: v for k_, v in cfg.items() if k_ not in ("num_warps", "P")}
                opts = dict(num_warps=cfg["num_warps"], num_stages=1)
                progs = cfg["P"] * SMS
                def gw_run():
                    part = D._launch_wgrad_rows(meta, opts, dy, x, R, R, (st, st), pad4, (1, 1), False, progs)
                    out = torch.empty_like(w)
                    out.view(C, R * R).copy_(part.sum(0).t())
                    return out
                try:
                    gwv = gw_run()
                except Exception as e:
                    print("  wgrad rows fail", cfg, repr(e)[:100], flush=True); continue
                err = rel(gwv, gw_ref)
                if not err < (1e-4 if dtype == torch.float32 else 2e-2):
                    print("  WRONG wgrad", cfg, err, flush=True); continue
                t = gpu_time(gw_run)
                if t < best[0]:
                    best = (t, cfg)
            rb_w, wcfg = best
            gbw = 100 * (x.numel() + dy.numel()) * x.element_size() / (rb_w * 1e-3) / 1e9 / BW
            print(f"{name:34s} bin  {fmt(cb_in*1e3)} {fmt(ob_in*1e3)} {fmt(rb_in*1e3)} {cb_in/ob_in:6.2f} {cb_in/rb_in:6.2f}        {bcfg}", flush=True)
            print(f"{name:34s} bwgt {fmt(cb_w*1e3)} {fmt(ob_w*1e3)} {fmt(rb_w*1e3)} {cb_w/ob_w:6.2f} {cb_w/rb_w:6.2f} {gbw:5.0f}  {wcfg}", flush=True)
            newb = (rb_in if st == 1 else ob_in) + rb_w
            print(f"{name:34s} bwd  {fmt(cb*1e3)} {fmt(1e3*(ob_in+ob_w))} {fmt(1e3*newb)} {cb/(ob_in+ob_w):6.2f} {cb/newb:6.2f}", flush=True)
print(f"done in {time.time() - T0:.0f} s")
