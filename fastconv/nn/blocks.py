"""Efficient-convolution building blocks on fastconv.nn.Conv2d.

Each block computes exactly the plain-PyTorch composition it names (tests compare
outputs and gradients against an F.conv2d composition with the same weights). Norm
and activation are torchvision-style factories: ``norm_layer(channels)`` and
``activation_layer()``; None leaves the stage out (and gives the conv a bias).

FLOPs everywhere are 2 x the multiply-accumulates of the convolutions, which is what
torch.utils.flop_counter counts: norms, activations, pooling, the SE scale and the
residual add are not counted. Every block has ``flops(input_shape)`` and
``output_shape(input_shape)``. Parameter counts below assume BatchNorm2d (2 parameters
per channel) wherever a norm is used; "bias" means the conv has one only without norm.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

from torch import nn

from .conv import Conv2d

NormFactory = Optional[Callable[[int], nn.Module]]
ActFactory = Optional[Callable[[], nn.Module]]


def _same_padding(kernel_size: int, dilation: int) -> int:
    return dilation * (kernel_size - 1) // 2


def _chain(modules, input_shape):
    """(total FLOPs, output shape) of modules applied in order."""
    total, shape = 0, tuple(input_shape)
    for m in modules:
        if hasattr(m, "flops"):
            total += m.flops(shape)
            shape = m.output_shape(shape)
    return total, shape


class ConvNormAct(nn.Sequential):
    """Conv2d -> [norm] -> [activation], torchvision's Conv2dNormActivation layout
    (children "0", "1", "2", so fastconv.fuse folds it).

    Parameters: out·(in/groups)·k² + (out bias without norm | 2·out with BatchNorm).
    FLOPs: those of the conv, 2·N·out·Ho·Wo·(in/groups)·k².
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1,
                 padding=None, dilation=1, groups: int = 1, norm_layer: NormFactory = nn.BatchNorm2d,
                 activation_layer: ActFactory = nn.ReLU, bias: Optional[bool] = None,
                 algo: str = "auto") -> None:
        if padding is None:
            ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            dl = (dilation, dilation) if isinstance(dilation, int) else dilation
            padding = tuple(_same_padding(k, d) for k, d in zip(ks, dl))
        if bias is None:
            bias = norm_layer is None
        layers = [Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias=bias, algo=algo)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer())
        super().__init__(*layers)
        self.out_channels = out_channels

    @property
    def conv(self) -> Conv2d:
        return self[0]

    def output_shape(self, input_shape):
        return self.conv.output_shape(input_shape)

    def flops(self, input_shape) -> int:
        return self.conv.flops(input_shape)


class DepthwiseConv2d(Conv2d):
    """Depthwise k x k convolution: groups = channels, each channel filtered alone.

    Parameters: C·m·k² (+ C·m bias), m = channel_multiplier.
    FLOPs: 2·N·C·m·Ho·Wo·k².
    Padding defaults to dilation·(k-1)/2 ("same" size at stride 1 for odd k).
    """

    def __init__(self, channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 channel_multiplier: int = 1, bias: bool = False, padding_mode: str = "zeros",
                 device=None, dtype=None, *, algo: str = "auto",
                 activation: Optional[str] = None) -> None:
        if padding is None:
            ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            dl = (dilation, dilation) if isinstance(dilation, int) else dilation
            padding = tuple(_same_padding(k, d) for k, d in zip(ks, dl))
        super().__init__(channels, channels * channel_multiplier, kernel_size, stride, padding,
                         dilation, groups=channels, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype, algo=algo, activation=activation)


class PointwiseConv2d(Conv2d):
    """1 x 1 convolution: a per-pixel linear map over channels (a GEMM).

    Parameters: out·in/groups (+ out bias).
    FLOPs: 2·N·out·Ho·Wo·in/groups, Ho = ceil(H / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride=1, groups: int = 1,
                 bias: bool = False, device=None, dtype=None, *, algo: str = "auto",
                 activation: Optional[str] = None) -> None:
        super().__init__(in_channels, out_channels, 1, stride, 0, 1, groups, bias=bias,
                         device=device, dtype=dtype, algo=algo, activation=activation)


class DilatedConv2d(Conv2d):
    """A dilated (atrous) k x k convolution: a plain Conv2d with dilation d and
    padding d·(k-1)/2, so the output keeps the input size at stride 1 (DeepLab).

    Parameters: out·(in/groups)·k² (+ out bias).
    FLOPs: 2·N·out·Ho·Wo·(in/groups)·k² (dilation widens the receptive field for free).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 2, stride=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None, *, algo: str = "auto",
                 activation: Optional[str] = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         _same_padding(kernel_size, dilation), dilation, groups, bias=bias,
                         padding_mode=padding_mode, device=device, dtype=dtype, algo=algo,
                         activation=activation)


class DepthwiseSeparableConv2d(nn.Sequential):
    """Depthwise k x k then pointwise 1 x 1 (MobileNetV1 / Xception), each optionally
    followed by norm and activation. Children: ``depthwise``, ``pointwise`` (ConvNormAct).

    Parameters: C_in·k² + C_out·C_in, plus per stage C (bias, without norm) or 2C (BN).
    FLOPs: 2·N·C_in·Ho·Wo·k² + 2·N·C_out·Ho·Wo·C_in
    (vs 2·N·C_out·Ho·Wo·C_in·k² dense: a ratio of 1/C_out + 1/k²).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride=1,
                 dilation: int = 1, norm_layer: NormFactory = None, activation_layer: ActFactory = None,
                 algo: str = "auto") -> None:
        super().__init__(OrderedDict([
            ("depthwise", ConvNormAct(in_channels, in_channels, kernel_size, stride, None, dilation,
                                      groups=in_channels, norm_layer=norm_layer,
                                      activation_layer=activation_layer, algo=algo)),
            ("pointwise", ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer,
                                      activation_layer=activation_layer, algo=algo)),
        ]))

    def output_shape(self, input_shape):
        return _chain(self, input_shape)[1]

    def flops(self, input_shape) -> int:
        return _chain(self, input_shape)[0]


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce -> 3x3 (stride, groups, dilation) -> 1x1 expand,
    each followed by norm, activation after the first two and after the residual add.
    The shortcut is the identity, or a strided 1x1 conv + norm (``downsample``) when
    the stride or channel count changes.

    Parameters (B = width, out defaults to 4·B):
    in·B + B·(B/groups)·9 + B·out [+ in·out if downsample], plus norms 2·(B + B + out [+ out]).
    FLOPs: 2·N·H·W·in·B + 2·N·Ho·Wo·B·(B/groups)·9 + 2·N·Ho·Wo·B·out [+ 2·N·Ho·Wo·in·out].
    """

    def __init__(self, in_channels: int, width: int, out_channels: Optional[int] = None,
                 stride: int = 1, groups: int = 1, dilation: int = 1,
                 norm_layer: NormFactory = nn.BatchNorm2d, activation_layer: ActFactory = nn.ReLU,
                 algo: str = "auto") -> None:
        super().__init__()
        out_channels = 4 * width if out_channels is None else out_channels
        norm = norm_layer if norm_layer is not None else (lambda c: nn.Identity())
        act = activation_layer if activation_layer is not None else nn.Identity
        bias = norm_layer is None
        self.conv1 = Conv2d(in_channels, width, 1, bias=bias, algo=algo)
        self.bn1 = norm(width)
        self.act1 = act()
        self.conv2 = Conv2d(width, width, 3, stride, dilation, dilation, groups, bias=bias, algo=algo)
        self.bn2 = norm(width)
        self.act2 = act()
        self.conv3 = Conv2d(width, out_channels, 1, bias=bias, algo=algo)
        self.bn3 = norm(out_channels)
        self.act3 = act()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(Conv2d(in_channels, out_channels, 1, stride, bias=bias,
                                                   algo=algo), norm(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)

    def output_shape(self, input_shape):
        return _chain([self.conv1, self.conv2, self.conv3], input_shape)[1]

    def flops(self, input_shape) -> int:
        total = _chain([self.conv1, self.conv2, self.conv3], input_shape)[0]
        if self.downsample is not None:
            total += self.downsample[0].flops(input_shape)
        return total


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (N, g·c, H, W) -> view (N, g, c, H, W) ->
    transpose groups and channels -> (N, c·g, H, W). Same as torch.nn.ChannelShuffle.

    Parameters: 0. FLOPs: 0 (a permutation of channels).
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        if groups <= 0:
            raise ValueError(f"ChannelShuffle: groups must be positive, got {groups}")
        self.groups = groups

    def forward(self, x):
        *lead, c, h, w = x.shape
        if c % self.groups != 0:
            raise ValueError(f"ChannelShuffle: groups={self.groups} does not divide {c} channels")
        y = x.reshape(*lead, self.groups, c // self.groups, h, w).transpose(-4, -3)
        return y.reshape(*lead, c, h, w)

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def flops(self, input_shape) -> int:
        return 0

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class GroupedConv2d(nn.Sequential):
    """Grouped k x k convolution -> [norm] -> [activation] -> [ChannelShuffle(groups)]
    (ShuffleNet's GConv). Without the shuffle, stacked grouped convs never mix groups.

    Parameters: out·(in/g)·k² (+ out bias without norm, 2·out with BN).
    FLOPs: 2·N·out·Ho·Wo·(in/g)·k².
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride=1,
                 groups: int = 2, padding=None, dilation: int = 1, shuffle: bool = True,
                 norm_layer: NormFactory = None, activation_layer: ActFactory = None,
                 algo: str = "auto") -> None:
        block = ConvNormAct(in_channels, out_channels, kernel_size, stride, padding, dilation,
                            groups, norm_layer=norm_layer, activation_layer=activation_layer,
                            algo=algo)
        layers = list(block)
        if shuffle:
            layers.append(ChannelShuffle(groups))
        super().__init__(*layers)
        self.groups = groups

    def output_shape(self, input_shape):
        return self[0].output_shape(input_shape)

    def flops(self, input_shape) -> int:
        return self[0].flops(input_shape)


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expansion (skipped when expand_ratio == 1)
    -> k x k depthwise (stride) -> 1x1 linear projection, with norm after each and
    activation after the first two; shortcut when stride == 1 and in == out.
    Child ``conv`` is torchvision's layout.

    Parameters (E = round(in·t)): in·E [if t != 1] + E·k² + E·out, plus norms 2·(E [+E] + out).
    FLOPs: 2·N·H·W·in·E [if t != 1] + 2·N·Ho·Wo·E·k² + 2·N·Ho·Wo·E·out.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 expand_ratio: float = 6, kernel_size: int = 3,
                 norm_layer: NormFactory = nn.BatchNorm2d, activation_layer: ActFactory = nn.ReLU6,
                 algo: str = "auto") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        layers = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, norm_layer=norm_layer,
                                      activation_layer=activation_layer, algo=algo))
        layers.append(ConvNormAct(hidden, hidden, kernel_size, stride, groups=hidden,
                                  norm_layer=norm_layer, activation_layer=activation_layer, algo=algo))
        layers.append(Conv2d(hidden, out_channels, 1, bias=norm_layer is None, algo=algo))
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res_connect else y

    def output_shape(self, input_shape):
        return _chain(self.conv, input_shape)[1]

    def flops(self, input_shape) -> int:
        return _chain(self.conv, input_shape)[0]


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation: x · gate(fc2(act(fc1(avgpool(x))))), fc1/fc2 as 1x1
    convs with bias (torchvision's layout). squeeze_channels defaults to
    max(1, channels // reduction).

    Parameters: 2·C·S + S + C. FLOPs: 4·N·C·S (the two 1x1 convs on a 1x1 map).
    """

    def __init__(self, channels: int, squeeze_channels: Optional[int] = None, reduction: int = 4,
                 activation_layer: Callable[[], nn.Module] = nn.ReLU,
                 gate_layer: Callable[[], nn.Module] = nn.Sigmoid, algo: str = "auto") -> None:
        super().__init__()
        if squeeze_channels is None:
            squeeze_channels = max(1, channels // reduction)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = Conv2d(channels, squeeze_channels, 1, algo=algo)
        self.activation = activation_layer()
        self.fc2 = Conv2d(squeeze_channels, channels, 1, algo=algo)
        self.gate = gate_layer()

    def forward(self, x):
        scale = self.gate(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def flops(self, input_shape) -> int:
        *lead, c, _, _ = input_shape
        pooled = (*lead, c, 1, 1)
        return _chain([self.fc1, self.fc2], pooled)[0]


class FactorizedConv2d(nn.Sequential):
    """A k x k convolution factorized into k x 1 then 1 x k (Inception-v3), with
    ``mid_channels`` (default out) between; each stage optionally followed by norm and
    activation. The k x 1 stage takes the vertical stride, the 1 x k the horizontal.

    Parameters: in·M·k + M·out·k (vs in·out·k² unfactorized), plus bias or norm per stage.
    FLOPs: 2·N·M·Ho·W·in·k + 2·N·out·Ho·Wo·M·k.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 mid_channels: Optional[int] = None, norm_layer: NormFactory = None,
                 activation_layer: ActFactory = None, algo: str = "auto") -> None:
        mid = out_channels if mid_channels is None else mid_channels
        p = (kernel_size - 1) // 2
        super().__init__(OrderedDict([
            ("vertical", ConvNormAct(in_channels, mid, (kernel_size, 1), (stride, 1), (p, 0),
                                     norm_layer=norm_layer, activation_layer=activation_layer,
                                     algo=algo)),
            ("horizontal", ConvNormAct(mid, out_channels, (1, kernel_size), (1, stride), (0, p),
                                       norm_layer=norm_layer, activation_layer=activation_layer,
                                       algo=algo)),
        ]))

    def output_shape(self, input_shape):
        return _chain(self, input_shape)[1]

    def flops(self, input_shape) -> int:
        return _chain(self, input_shape)[0]


class EfficientConvBlock(nn.Module):
    """EfficientNet's MBConv: 1x1 expansion (skipped when expand_ratio == 1) -> k x k
    depthwise (stride) -> SqueezeExcitation (squeeze = max(1, int(in·se_ratio)), skipped
    when se_ratio == 0) -> 1x1 linear projection, norm after every conv, activation
    after expansion and depthwise; residual when stride == 1 and in == out.

    Parameters (E = in·t, S = squeeze): in·E [t != 1] + E·k² + (2·E·S + S + E) [SE] + E·out,
    plus norms 2·(E [+E] + out).
    FLOPs: 2·N·H·W·in·E [t != 1] + 2·N·Ho·Wo·E·k² + 4·N·E·S [SE] + 2·N·Ho·Wo·E·out.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 expand_ratio: int = 4, se_ratio: float = 0.25,
                 norm_layer: NormFactory = nn.BatchNorm2d, activation_layer: ActFactory = nn.SiLU,
                 algo: str = "auto") -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers = OrderedDict()
        if expand_ratio != 1:
            layers["expand"] = ConvNormAct(in_channels, hidden, 1, norm_layer=norm_layer,
                                           activation_layer=activation_layer, algo=algo)
        layers["depthwise"] = ConvNormAct(hidden, hidden, kernel_size, stride, groups=hidden,
                                          norm_layer=norm_layer, activation_layer=activation_layer,
                                          algo=algo)
        if se_ratio > 0:
            layers["se"] = SqueezeExcitation(hidden, max(1, int(in_channels * se_ratio)),
                                             activation_layer=activation_layer or nn.SiLU, algo=algo)
        layers["project"] = ConvNormAct(hidden, out_channels, 1, norm_layer=norm_layer,
                                        activation_layer=None, algo=algo)
        self.block = nn.Sequential(layers)
        self.use_res_connect = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res_connect else y

    def output_shape(self, input_shape):
        return _chain(self.block, input_shape)[1]

    def flops(self, input_shape) -> int:
        return _chain(self.block, input_shape)[0]


__all__ = ["ConvNormAct", "DepthwiseConv2d", "PointwiseConv2d", "DilatedConv2d",
           "DepthwiseSeparableConv2d", "Bottleneck", "ChannelShuffle", "GroupedConv2d",
           "InvertedResidual", "SqueezeExcitation", "FactorizedConv2d", "EfficientConvBlock"]
