"""GPU check of fastconv's eager fast path: outputs and gradients against F.conv2d and
against the same call through the registered ops (fastconv._eager.ENABLED = False), for
dense, grouped and depthwise convs in both layouts, with bias and fused activations; and
that FlopCounterMode still sees the ops.

    python benchmarks/eager_check.py
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import fastconv
from fastconv import _eager

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: under TRITON_INTERPRET=1
CASES = [  # (N, C, H, W), (K, C/g, R, S), stride, padding, groups
    ((2, 16, 9, 9), (32, 16, 3, 3), 1, 1, 1),
    ((2, 32, 8, 8), (32, 32, 1, 1), 1, 0, 1),
    ((1, 8, 11, 10), (16, 2, 3, 3), 2, 1, 4),
    ((2, 16, 9, 8), (16, 1, 3, 3), 1, 1, 16),
    ((1, 12, 10, 10), (24, 1, 5, 5), 2, 2, 12),
]

# On CUDA "auto" picks the Triton families; on the CPU name them.
ALGO = (lambda g, ws: "auto") if DEVICE == "cuda" else (
    lambda g, ws: "triton_depthwise" if ws[1] == 1 and g > 1 else "triton_igemm")


def run(case, cl, act, dtype):
    xs, ws, st, pad, g = case
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(xs, device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)
    w = (torch.randn(ws, device=DEVICE, dtype=dtype) / (ws[1] * ws[2] * ws[3]) ** 0.5)
    b = torch.randn(ws[0], device=DEVICE, dtype=dtype)
    gy = None
    results = []
    for enabled in (True, False):
        _eager.ENABLED = enabled
        xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
        y = fastconv.conv2d(xr, wr, br, st, pad, 1, g, activation=act, algo=ALGO(g, ws))
        kind = type(y.grad_fn).__name__
        if gy is None:
            gy = torch.randn_like(y)
        grads = torch.autograd.grad(y, (xr, wr, br), gy)
        with torch.no_grad():
            y_ng = fastconv.conv2d(x, w, b, st, pad, 1, g, activation=act, algo=ALGO(g, ws))
        results.append((y.detach(), *grads, y_ng, kind))
    _eager.ENABLED = True
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    ref = fastconv._ops.apply_activation(F.conv2d(xr, wr, br, st, pad, 1, g), act)
    rgrads = torch.autograd.grad(ref, (xr, wr, br), gy.double())
    fast, ops = results
    same = all(torch.equal(a, c) for a, c in zip(fast[:5], ops[:5]))
    errs = [((a.double() - r).norm() / r.norm()).item()
            for a, r in zip(fast[:4], (ref.detach(), *rgrads))]
    return fast[5], ops[5], same, max(errs)


def main():
    torch.backends.cudnn.allow_tf32 = False
    bad = 0
    for case in CASES:
        for cl in (False, True) if DEVICE == "cuda" else (True,):
            # Few variants: every (layout, activation, dtype) is a separate Triton compile.
            for act, dtype in ((("none", torch.float32), ("silu", torch.float32),
                                ("relu", torch.bfloat16)) if DEVICE == "cuda" else
                               (("silu", torch.float32),)):
                kf, ko, same, err = run(case, cl, act, dtype)
                tol = 1e-4 if dtype == torch.float32 else 2e-2
                ok = same and err < tol and kf == "Conv2dFunctionBackward" and kf != ko
                bad += not ok
                print(f"{'ok ' if ok else 'BAD'} {case} cl={cl} {act} {dtype}: fast={kf} "
                      f"ops={ko} bitwise-equal={same} max rel err={err:.2e}")
    # The plans' direct launch (kernels/_common.Launch) keys compiled kernels by pointer
    # alignment: an input 4 bytes off a 16-byte boundary, between aligned calls.
    xa = torch.randn(2, 16, 9, 9, device=DEVICE)
    wa = torch.randn(32, 16, 3, 3, device=DEVICE) / 12
    xo = torch.randn(xa.numel() + 1, device=DEVICE)[1:].view(xa.shape)
    xo.copy_(xa)
    for t in (xa, xo, xa, xo, xo):
        y = fastconv.conv2d(t, wa, None, 1, 1, algo=ALGO(1, wa.shape))
        err = ((y.double() - F.conv2d(t.double(), wa.double(), None, 1, 1)).norm()
               / y.double().norm()).item()
        ok = err < 1e-4
        bad += not ok
    print(f"{'ok ' if ok else 'BAD'} aligned/unaligned input alternating: last rel err {err:.2e}")
    algo = "auto" if DEVICE == "cuda" else "triton_igemm"
    x = torch.randn(2, 16, 8, 8, device=DEVICE, requires_grad=True)
    w = torch.randn(16, 16, 3, 3, device=DEVICE, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        fastconv.conv2d(x, w, padding=1, algo=algo).sum().backward()
    counts = {str(k) for k in fc.get_flop_counts()["Global"]}
    print("FlopCounterMode sees:", sorted(counts))
    bad += not any("triton_igemm_conv2d_grad_weight" in c for c in counts)
    algo = "auto" if DEVICE == "cuda" else "triton_igemm"
    mod = fastconv.nn.Conv2d(16, 16, 3, padding=1, algo=algo).to(DEVICE)
    ref = torch.nn.Conv2d(16, 16, 3, padding=1).to(DEVICE)
    ref.load_state_dict(mod.state_dict())
    xi = torch.randn(4, 16, 8, 8, device=DEVICE)
    mod(xi).square().sum().backward()
    ref(xi).square().sum().backward()
    err = ((mod.weight.grad - ref.weight.grad).norm() / ref.weight.grad.norm()).item()
    print(f"nn.Conv2d training step: weight grad rel err vs nn.Conv2d {err:.2e}")
    bad += not err < 1e-4
    print("EAGER CHECK:", "PASS" if bad == 0 else f"{bad} FAILURES")


if __name__ == "__main__":
    main()
