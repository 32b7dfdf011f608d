"""fastconv: hand-written convolution kernels (C++ on the CPU, Triton on the GPU),
drop-in modules, a benchmark against cuDNN/oneDNN, and a memory-access explainer."""
from __future__ import annotations

from .version import __version__
from . import _cpu  # noqa: F401  (registers the CPU algorithms)
from . import _triton  # noqa: F401  (registers the Triton algorithms when triton imports)
from . import _C
from . import _autocast
from .functional import (ConvNotImplementedError, ConvOutOfMemoryError, ConvTypeError,
                         ConvValueError, conv2d, conv_spec, flops, select)
from .registry import Algorithm, algorithms
from .spec import ConvSpec
from . import nn  # noqa: E402  (drop-in modules)
from .model import ConversionWarning, convert, fuse, revert  # noqa: E402
from ._settings import settings, use_algorithms  # noqa: E402

_autocast.register_all()  # the ops' autocast rule (every algorithm is registered by now)


def im2col_workspace_bytes(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                           dtype=None) -> int:
    """Bytes of column buffer algo='im2col' allocates for this conv (bounded by tiling)."""
    import torch

    dtype = dtype or torch.float32
    x = torch.empty(tuple(input_shape), device="meta", dtype=dtype)
    w = torch.empty(tuple(weight_shape), device="meta", dtype=dtype)
    x4, _, spec = conv_spec(x, w, None, stride, padding, dilation, groups)
    return _C.im2col_workspace_bytes(list(x4.shape), list(w.shape), list(spec.stride),
                                     list(spec.padding), list(spec.dilation), groups,
                                     spec.element_size)


__all__ = ["conv2d", "conv_spec", "ConvValueError", "ConvTypeError", "ConvNotImplementedError",
           "ConvOutOfMemoryError", "flops", "select", "algorithms", "Algorithm", "ConvSpec",
           "im2col_workspace_bytes", "nn", "convert", "revert", "fuse", "ConversionWarning",
           "settings", "use_algorithms", "__version__"]
