"""How im2col's NCHW 1x1 forward should cut its MKL sgemm into items (1 thread, batch 1).

ResNet-50's 1x1 layers as one GEMM per image, y[K][HW] = W[K][C] @ x[C][HW], timed whole and
cut into items (torch.mm on views, so each call also carries ~3-5 us of dispatch that im2col's
direct sgemm_ call does not), against F.conv2d (oneDNN) on the same image:
    python dev/cpu/mkl_items.py
Cuts: the 128-channel x 512-pixel items im2col used, whole K x plane halves, K halves x whole
plane, 128 channels x plane halves, 256 channels x whole plane (csrc/blocking.h
kIm2colPointwiseItemChannels). Milliseconds of the thread's CPU time, medians.
"""
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


def main():
    torch.set_num_threads(1)
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
