"""Drop-in modules: fastconv.nn.Conv2d and efficient-convolution blocks built on it."""
from .blocks import (Bottleneck, ChannelShuffle, ConvNormAct, DepthwiseConv2d,
                     DepthwiseSeparableConv2d, DilatedConv2d, EfficientConvBlock, FactorizedConv2d,
                     GroupedConv2d, InvertedResidual, PointwiseConv2d, SqueezeExcitation)
from .conv import Conv2d

__all__ = ["Conv2d", "ConvNormAct", "DepthwiseConv2d", "PointwiseConv2d", "DilatedConv2d",
           "DepthwiseSeparableConv2d", "Bottleneck", "ChannelShuffle", "GroupedConv2d",
           "InvertedResidual", "SqueezeExcitation", "FactorizedConv2d", "EfficientConvBlock"]
