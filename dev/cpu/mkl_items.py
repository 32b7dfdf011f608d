"""How im2col's 1x1 forward should cut its MKL sgemm into items (1 thread, batch 1).

ResNet-50's 1x1 layers as one GEMM per image, y[K][HW] = W[K][C] @ x[C][HW], timed whole and
cut into items (torch.mm on views, so each call also carries ~3-5 us of dispatch that im2col's
direct sgemm_ call does not), against F.conv2d (oneDNN) on the same image:
    python dev/cpu/mkl_items.py           # NCHW
    python dev/cpu/mkl_items.py --nhwc    # channels_last, the 56x56 layers
NCHW cuts: the 128-channel x 512-pixel items im2col used, whole K x plane halves, K halves x
whole plane, 128 channels x plane halves, 256 channels x whole plane (csrc/blocking.h
kIm2colPointwiseItemChannels). NHWC, y[P][K] = x[P][C] @ W^T: the 448-pixel x 256-channel
items im2col used, pixel halves, pixel quarters. Milliseconds of the thread's CPU time, medians.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

LAYERS = [(64, 64, 3136), (64, 256, 3136), (256, 64, 3136), (256, 128, 3136), (128, 512, 784),
          (512, 128, 784), (512, 256, 784), (256, 1024, 196), (1024, 256, 196), (1024, 512, 196),
          (512, 2048, 49), (2048, 512, 49)]


def timeit(fn, n=9, inner=5):
    fn()
    ts = []
    for _ in range(n):
        t0 = time.thread_time()
        for _ in range(inner):
            fn()
        ts.append((time.thread_time() - t0) / inner)
    return statistics.median(ts) * 1e3


def cdiv(a, b):
    return -(-a // b)


NHWC_LAYERS = [(64, 64, 3136), (64, 256, 3136), (256, 64, 3136), (256, 128, 3136),
               (256, 512, 3136)]


def nhwc():
    for C, K, P in NHWC_LAYERS:
        X, W, Y = torch.randn(P, C), torch.randn(K, C), torch.empty(P, K)

        def items(pb, cb):
            def run():
                for p0 in range(0, P, pb):
                    for k0 in range(0, K, cb):
                        torch.mm(X[p0:p0 + pb], W[k0:k0 + cb].t(), out=Y[p0:p0 + pb, k0:k0 + cb])
            return timeit(run)

        res = {"whole": timeit(lambda: torch.mm(X, W.t(), out=Y)),
               "448xmin256": items(cdiv(P, cdiv(P, 512)), min(K, 256)),
               "1568xK": items(cdiv(P, 2), K),
               "784xK": items(cdiv(P, 4), K)}
        side = int(P ** 0.5)
        cl = torch.channels_last
        x = torch.randn(1, C, side, side).contiguous(memory_format=cl)
        w = torch.randn(K, C, 1, 1).contiguous(memory_format=cl)
        res["onednn"] = timeit(lambda: F.conv2d(x, w))
        print(f"{C:5d}->{K:5d} @{P:5d}  " + "  ".join(f"{k} {v:.3f}" for k, v in res.items()),
              flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nhwc", action="store_true")
    torch.set_num_threads(1)
    if ap.parse_args().nhwc:
        return nhwc()
    for C, K, HW in LAYERS:
        W, X, Y = torch.randn(K, C), torch.randn(C, HW), torch.empty(K, HW)

        def items(ich, ipx):
            def run():
                for k0 in range(0, K, ich):
                    for p0 in range(0, HW, ipx):
                        torch.mm(W[k0:k0 + ich], X[:, p0:p0 + ipx], out=Y[k0:k0 + ich, p0:p0 + ipx])
            return timeit(run)

        res = {"whole": timeit(lambda: torch.mm(W, X, out=Y)),
               "128x512": items(min(128, K), cdiv(HW, cdiv(HW, 512))),
               "Kx(HW/2)": items(K, cdiv(HW, 2)),
               "(K/2)xHW": items(K // 2, HW),
               "128x(HW/2)": items(min(128, K), cdiv(HW, 2)),
               "256xHW": items(min(256, K), HW)}
        side = int(HW ** 0.5)
        x, w = torch.randn(1, C, side, side), torch.randn(K, C, 1, 1)
        res["onednn"] = timeit(lambda: F.conv2d(x, w))
        print(f"{C:5d}->{K:5d} @{HW:5d}  " + "  ".join(f"{k} {v:.3f}" for k, v in res.items()),
              flush=True)


if __name__ == "__main__":
    main()
