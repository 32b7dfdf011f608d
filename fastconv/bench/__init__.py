"""fastconv bench: timing fastconv against PyTorch (cuDNN / oneDNN) and the equivalent GEMM."""
