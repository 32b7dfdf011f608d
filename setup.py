"""Build fastconv: the C++ extension fastconv._C plus the Python packages.

torch is a build dependency, so install with `pip install --no-build-isolation -e .`.
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))

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
    name="fastconv",
    version="0.1.0",
    description="Hand-written convolution kernels (C++ CPU, Triton GPU) with a memory-access explainer",
    packages=find_packages(include=["fastconv", "fastconv.*"]) + ["fastconv.kernels"],
    package_dir={"fastconv.kernels": "kernels"},
    package_data={"fastconv": ["bench/tables/*.csv"]},
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
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "gpu": ["triton>=3.2"],
        "plots": ["matplotlib"],
        "test": ["pytest", "hypothesis", "triton>=3.2", "matplotlib"],
    },
    entry_points={"console_scripts": ["fastconv=fastconv.cli:main"]},
)
