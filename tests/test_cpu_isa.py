"""Run-time ISA dispatch of the CPU kernels: detection, the FASTCONV_CPU_ISA cap read at
load (the same binary takes the AVX2 path when AVX-512 is masked), set_max_isa, and
that every path a test forces is the one that runs."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastconv

from helpers import SUPPORTED_ISAS, isa_path


def _isa_in_subprocess(value):
    env = dict(os.environ, FASTCONV_CPU_ISA=value)
    code = "import fastconv; print(fastconv._C.cpu_isa(), fastconv._C.cpu_isa_supported())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def test_supported_is_detected():
    assert fastconv._C.cpu_isa_supported() in ("avx512", "avx2", "portable")
    assert fastconv._C.cpu_isa() == fastconv._C.cpu_isa_supported() or \
        os.environ.get("FASTCONV_CPU_ISA")


@pytest.mark.parametrize("cap", ["avx2", "portable"])
def test_env_cap_masks_wider_isas(cap):
    """FASTCONV_CPU_ISA=avx2 on an AVX-512 CPU runs the AVX2 path (as an AVX2-only CPU would)."""
    if cap not in SUPPORTED_ISAS:
        pytest.skip(f"CPU has no {cap}")
    r = _isa_in_subprocess(cap)
    assert r.returncode == 0, r.stderr
    used, supported = r.stdout.split()
    assert used == cap
    assert supported == fastconv._C.cpu_isa_supported()


def test_bad_env_value_names_the_problem():
    r = _isa_in_subprocess("sse9")
    assert r.returncode != 0
    assert "FASTCONV_CPU_ISA" in r.stderr and "sse9" in r.stderr


def test_set_max_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="avx512"):
        fastconv._C.set_max_isa("avx1024")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_forced_path_is_used_and_agrees(isa):
    torch.manual_seed(0)
    x = torch.randn(2, 24, 11, 13)
    w = torch.randn(40, 24, 3, 3)
    ref = F.conv2d(x.double(), w.double(), padding=1).float()
    with isa_path(isa):
        assert fastconv._C.cpu_isa() == isa
        for algo in ("direct", "im2col"):
            torch.testing.assert_close(fastconv.conv2d(x, w, padding=1, algo=algo), ref,
                                       rtol=1e-4, atol=1e-4)
