"""Build fastconv: the C++ extension fastconv._C and the Python packages.

The package metadata (name, version, license, dependencies, the `fastconv` command) is in
pyproject.toml; the version is written once, in fastconv/version.py.

fastconv._C is compiled against torch's headers and linked against its libraries, so it must
be built with the torch that will import it, in that torch's environment, without build
isolation:

    pip install --no-build-isolation -e .

An isolated build (plain `pip install .`, `pip wheel .`, `python -m build`) would run in a
temporary environment without that torch; this script stops it at once with that command.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
INSTALL = "pip install --no-build-isolation -e .   (or: pip wheel --no-build-isolation .)"

# Temporary build environments: pip's (pip-build-env-*) and uv's (builds-v*).
_ISOLATION_MARKERS = ("pip-build-env-", os.sep + "builds-v")


def isolated_build() -> bool:
    return any(m in p for p in sys.path for m in _ISOLATION_MARKERS)


def require_torch():
    """torch from the environment fastconv will run in, else exit with the right command."""
    if isolated_build():
        sys.exit("fastconv: refusing to build in an isolated build environment. fastconv._C must "
                 "be compiled against the torch that will import it, and an isolated build would "
                 "use another one (or none). Install torch first, then run, from the source "
                 f"directory:\n    {INSTALL}")
    try:
        import torch
    except ImportError:
        sys.exit("fastconv: torch is not importable. fastconv._C is compiled against the "
                 "installed torch: install torch first (e.g. `pip install torch`), then run:\n"
                 f"    {INSTALL}")
    return torch


require_torch()
from torch.utils.cpp_extension import BuildExtension, CppExtension  # noqa: E402

# Portable flags only: AVX2+FMA code is compiled per function with
# __attribute__((target("avx2,fma"))) and chosen at run time (csrc/cpu_features.h),
# so the same binary runs on a machine without AVX2.
# -fopenmp: at::parallel_for is serial in a translation unit compiled without
# OpenMP (ATen/ParallelOpenMP.h). The extension's libgomp is torch's (same
# SONAME, already loaded), so torch.set_num_threads governs our threads too.
cxx_flags = ["-O3", "-fno-math-errno", "-Wall", "-Wno-unused-function", "-fopenmp"]
if os.environ.get("FASTCONV_DEBUG_BUILD"):
    cxx_flags = ["-O0", "-g", "-fopenmp"]

setup(
    packages=find_packages(include=["fastconv", "fastconv.*"]) + ["fastconv.kernels"],
    package_dir={"fastconv.kernels": "kernels"},
    package_data={"fastconv": ["bench/tables/*.csv"],
                  "fastconv.kernels": ["tiles/*.json"]},  # tiles shipped per GPU (_plan.py)
    ext_modules=[
        CppExtension(
            "fastconv._C",
            sorted(glob.glob(os.path.join("csrc", "*.cpp"))),
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
