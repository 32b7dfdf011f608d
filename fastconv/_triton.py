"""The Triton algorithms (kernels/), registered when triton can be imported."""
from __future__ import annotations

try:
    import triton  # noqa: F401
except ImportError:  # CPU-only installs without triton
    triton = None
