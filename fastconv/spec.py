"""ConvSpec: one convolution's geometry, with its exact FLOP and byte counts.

The registry, `fastconv bench` and `fastconv explain` all describe a layer with
this one object.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class ConvSpec:
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: tuple[int, int] = (1, 1)
    # (top, bottom, left, right): PyTorch's 'same' can be asymmetric.
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: torch.dtype = field(default=torch.float32)
    layout: str = "nchw"
    device: str = "cpu"
    bias: bool = False

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    @classmethod
    def from_tensors(cls, input, weight, stride, padding, dilation, groups, bias=None) -> "ConvSpec":
        n, c, h, w = input.shape
        k, _, r, s = weight.shape
        cl = torch.channels_last
        layout = "nhwc" if (input.is_contiguous(memory_format=cl) and not input.is_contiguous()) else "nchw"
        return cls(n, c, h, w, k, r, s, tuple(stride), tuple(padding), tuple(dilation), groups,
                   input.dtype, layout, input.device.type, bias is not None)

    def with_(self, **changes) -> "ConvSpec":
        return replace(self, **changes)

    # Derived geometry.
    @property
    def Cg(self) -> int:
        return self.C // self.groups

    @property
    def Kg(self) -> int:
        return self.K // self.groups

    @property
    def Ho(self) -> int:
        eff = self.dilation[0] * (self.R - 1) + 1
        return (self.H + self.padding[0] + self.padding[1] - eff) // self.stride[0] + 1

    @property
    def Wo(self) -> int:
        eff = self.dilation[1] * (self.S - 1) + 1
        return (self.W + self.padding[2] + self.padding[3] - eff) // self.stride[1] + 1

    @property
    def is_depthwise(self) -> bool:
        # groups == C_in with any channel multiplier; C = 1 is a dense conv.
        return self.groups == self.C and self.C > 1 and self.K % self.C == 0

    @property
    def channel_multiplier(self) -> int:
        return self.K // self.C if self.is_depthwise else 0

    @property
    def element_size(self) -> int:
        return self.dtype.itemsize

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.K, self.Cg, self.R, self.S)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.K, self.Ho, self.Wo)

    # Costs.
    @property
    def macs(self) -> int:
        """Multiply-accumulates, counting taps that land in padding (as FLOP counters do)."""
        return self.N * self.K * self.Ho * self.Wo * self.Cg * self.R * self.S

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def min_bytes(self) -> int:
        """Each input, weight, bias and output element moved once."""
        elems = self.N * self.C * self.H * self.W + self.K * self.Cg * self.R * self.S
        elems += self.N * self.K * self.Ho * self.Wo + (self.K if self.bias else 0)
        return elems * self.element_size

    @property
    def gemm_shape(self) -> tuple[int, int, int]:
        """(M, N, K) of the equivalent GEMM for one group: M = N·Ho·Wo, N = K/g, K = (C/g)·R·S."""
        return (self.N * self.Ho * self.Wo, self.Kg, self.Cg * self.R * self.S)

    @property
    def arithmetic_intensity(self) -> float:
        return self.flops / max(self.min_bytes, 1)

    def describe(self) -> str:
        pad = self.padding
        p = f"{pad[0]}" if len(set(pad)) == 1 else f"{pad}"
        return (f"N={self.N} C={self.C} {self.H}x{self.W} -> K={self.K} {self.R}x{self.S} "
                f"s={self.stride[0] if self.stride[0] == self.stride[1] else self.stride} p={p} "
                f"d={self.dilation[0] if self.dilation[0] == self.dilation[1] else self.dilation} "
                f"g={self.groups}")
