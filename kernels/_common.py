"""Shared by the Triton kernel families, device side and launch: the fused epilogue, the
dot, dot precision, 64-bit index detection, output allocation, the split-sum kernel, and
`Launch` (a kernel launch with its arguments fixed). The host plan layer built on these --
plan cache, checks, tuner, split planner -- is kernels/_plan.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import threading

import torch
import triton
import triton.language as tl

from .timing import cuda_graph_time

ACTIVATION_CODES = {"none": 0, "relu": 1, "relu6": 2, "silu": 3, "gelu": 4}
INT32_LIMIT = 2**31 - 1
TORCH_TO_TL = {torch.float32: tl.float32, torch.float16: tl.float16,
               torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def activation_code(activation: str) -> int:
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"fastconv: unknown activation {activation!r}; expected one of "
                         f"{', '.join(ACTIVATION_CODES)}")
    return ACTIVATION_CODES[activation]


@triton.jit
def apply_activation(x, ACT: tl.constexpr):
    """Epilogue activation on an fp32 (or fp64) accumulator tile."""
    # Comparisons, not tl.maximum/minimum, so that NaN passes through as in torch.relu.
    if ACT == 1:
        x = tl.where(x < 0.0, 0.0, x)
    elif ACT == 2:
        x = tl.where(x < 0.0, 0.0, tl.where(x > 6.0, 6.0, x))
    elif ACT == 3:
        x = x / (1.0 + tl.exp(-x))
    elif ACT == 4:
        # Exact (erf) GELU, as torch.nn.functional.gelu's default.
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return x


@triton.jit
def mma(a, b, acc, USE_DOT: tl.constexpr, IS_FP32: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """acc += a @ b. fp32 operands use PREC ("tf32"/"ieee"); 16-bit ones the tensor cores'
    native mode. UPCAST: the interpreter's bf16 dot is wrong (triton 3.9 multiplies the raw
    bits), so there 16-bit operands go through fp32 -- exact, since their products are.
    USE_DOT=False (fp64): a broadcast multiply-sum on the CUDA cores."""
    if USE_DOT:
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        elif IS_FP32:
            acc = tl.dot(a, b, acc, input_precision=PREC)
        else:
            acc = tl.dot(a, b, acc)
    else:
        acc += tl.sum(a[:, :, None].to(ACC_DTYPE) * b[None, :, :].to(ACC_DTYPE), axis=1)
    return acc


@triton.jit
def pixel_coords(q, Ho, Wo, NEED_I64: tl.constexpr):
    """(n, oh, ow) of flat output pixels q over an N x Ho x Wo grid (the reduction index of
    every grad_weight), in int64 where offsets need it."""
    hw = Ho * Wo
    n = q // hw
    pq = q % hw
    oh = pq // Wo
    ow = pq % Wo
    if NEED_I64:
        n = n.to(tl.int64)
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
    return n, oh, ow


def dot_args(dtype: torch.dtype) -> dict:
    """The constexprs `mma` takes, for operands of `dtype`."""
    return dict(USE_DOT=dtype != torch.float64, IS_FP32=dtype == torch.float32,
                PREC=dot_precision(dtype),
                UPCAST=interpreting() and dtype in (torch.float16, torch.bfloat16),
                ACC_DTYPE=tl.float64 if dtype == torch.float64 else tl.float32)


def max_offset(t: torch.Tensor) -> int:
    """Largest element offset a kernel can form for `t` (sum of (size-1)*stride)."""
    return sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0) + 1


def needs_int64(*tensors) -> bool:
    """True when some element offset does not fit int32: kernels then index in int64."""
    return any(max_offset(t) > INT32_LIMIT for t in tensors if t is not None)


# Debug: fill every output with NaN before the kernel runs, so an element it fails to write
# shows. Read from FASTCONV_POISON once (an environment read costs ~0.7 us, more than some
# of the calls it would sit in); set_debug_poison switches it later (tests/conftest.py).
POISON = os.environ.get("FASTCONV_POISON") == "1"


def set_debug_poison(on: bool) -> None:
    global POISON
    POISON = bool(on)


def new_output(size, like: torch.Tensor, channels_last: bool, dtype=None) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(size, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)
    if POISON:
        out.fill_(float("nan"))
    return out


def is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots are TF32 iff torch.backends.cudnn.allow_tf32 (what cuDNN would do)."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def num_sms(device: torch.device, interpreted: int) -> int:
    """Multiprocessors of a CUDA device, which split reductions size their grids by; on CPU
    tensors (the interpreter) `interpreted` stands in, small enough to keep runs short."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return interpreted


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


@triton.jit
def split_sum_kernel(part_ptr, out_ptr, SPLIT, NUMEL, K, TAPS, BLOCK: tl.constexpr):
    """Fixed-order sum of a split reduction's partials part[SPLIT, NUMEL] (deterministic, no
    atomics), rounded once to out's dtype. Element e = tap * K + k lands at out[k, tap]:
    K = NUMEL, TAPS = 1 keeps the order; depthwise's [taps, channels] partials transpose
    into the weight's [channels, taps]. Writes every element of out ((e % K, e // K) is a
    bijection onto [K, TAPS])."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = e < NUMEL
    acc = tl.load(part_ptr + e, mask=ok, other=0.0)
    p = part_ptr
    for _ in range(1, SPLIT):
        p += NUMEL  # pointer arithmetic is 64-bit
        acc += tl.load(p + e, mask=ok, other=0.0)
    tl.store(out_ptr + (e % K) * TAPS + e // K, acc.to(out_ptr.dtype.element_ty), mask=ok)


SPLIT_SUM_BLOCK = 512


def split_sum_args(part_size, k=None):
    """(grid, scalar args, constexprs and options) of split_sum_kernel(part, out) for
    partials of part_size = (split, ...); k: the inner extent to transpose by (None: keep
    the order). One fixed-argument launch, where torch.sum(0) (+ a copy_ to 16-bit or a
    transpose) cost two or three dispatched ops a call."""
    numel = 1
    for d in part_size[1:]:
        numel *= d
    k = numel if k is None else k
    return ((triton.cdiv(numel, SPLIT_SUM_BLOCK),), (part_size[0], numel, k, numel // k),
            dict(BLOCK=SPLIT_SUM_BLOCK, num_warps=4))


# Set in the tuner's compile threads (kernels/_plan._compile_all): there `jit_launch` only
# compiles. Thread-local, so the main thread's launches are untouched meanwhile.
_compiling = threading.local()


@contextlib.contextmanager
def compile_only():
    """In this block (this thread), `jit_launch` compiles its kernel without launching it."""
    _compiling.on = True
    try:
        yield
    finally:
        _compiling.on = False


def jit_launch(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs): a tuner's JIT launch of one candidate. Under
    `compile_only` it is JITFunction.warmup (bind, specialize, compile; triton >= 3.0),
    which launches nothing."""
    if getattr(_compiling, "on", False):
        return kernel.warmup(*args, grid=grid, **kwargs)
    return kernel[grid](*args, **kwargs)


GRAPH_LAUNCHES = 10  # launches per captured graph when timing a candidate


def gpu_time(fn) -> float:
    """The tuner's time (ms) of one launch of a candidate (kernels/timing.py)."""
    return cuda_graph_time(fn, calls=GRAPH_LAUNCHES)


try:
    from triton.compiler import CompiledKernel as _CompiledKernel
except ImportError:  # pragma: no cover - every triton this supports has it
    _CompiledKernel = None


def _direct_launch_supported() -> bool:
    """CompiledKernel[grid](*args) takes every kernel parameter in order, constexprs
    included, from triton 3.2 on (checked against 3.6 and 3.9: JITFunction.run ends in the
    same launcher call). FASTCONV_DIRECT_LAUNCH=0 turns the direct launch off."""
    if _CompiledKernel is None or not callable(getattr(_CompiledKernel, "__getitem__", None)):
        return False
    if os.environ.get("FASTCONV_DIRECT_LAUNCH", "1") == "0":
        return False
    try:
        major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (3, 2)


DIRECT_LAUNCH = _direct_launch_supported()
_current_device = torch.cuda.current_device  # the device Triton launches on

# Triton signature types of scalars a native launch can pass (32-bit or 64-bit slots).
_NATIVE_SCALARS = frozenset(("i1", "i8", "i16", "i32", "i64", "u1", "u8", "u16", "u32", "u64",
                             "fp32", "fp64"))


def _native_launch_class():
    """fastconv._C.NativeLaunch (csrc/triton_launch.cpp) where the extension has it and the
    CUDA driver loads, from triton 3.5 on: its launcher passes every non-constexpr
    parameter in signature order, then the global and profile scratch pointers (checked
    against 3.6 and 3.9)."""
    try:
        major, minor = (int(v) for v in triton.__version__.split(".")[:2])
        C = importlib.import_module("fastconv._C")
    except (ValueError, ImportError):
        return None
    cls = getattr(C, "NativeLaunch", None)
    if cls is None or (major, minor) < (3, 5) or C.cuda_driver_error():
        return None
    return cls


def native_params(kernel, args, n_tensors):
    """The parameter list of _C.NativeLaunch for compiled `kernel` called with `args` (the
    tensors first): ("tensor", i) or (signature type, value) per non-constexpr parameter,
    then the two scratch pointers; None where the kernel needs what a native launch does
    not do (clusters, cooperative or PDL launches, scratch memory, TMA descriptors,
    instrumentation, tuple parameters)."""
    md = kernel.metadata
    if (getattr(md, "num_ctas", 1) != 1 or getattr(md, "launch_cooperative_grid", False)
            or getattr(md, "launch_pdl", False) or getattr(md, "tensordesc_meta", None)
            or getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0)
            or getattr(md, "instrumentation_mode", "")):
        return None
    types = list(kernel.src.signature.values())
    if len(types) != len(args):
        return None
    params = []
    for i, (ty, value) in enumerate(zip(types, args)):
        if ty == "constexpr":
            continue
        if not isinstance(ty, str):
            return None
        if ty.startswith("*"):
            if i >= n_tensors or not isinstance(value, torch.Tensor):
                return None
            params.append(("tensor", i))
        elif ty in _NATIVE_SCALARS and isinstance(value, (int, float)):
            params.append((ty, value))
        else:
            return None
    return params + [("nullptr", 0), ("nullptr", 0)]


class Launch:
    """One plan's kernel launch, `kernel[grid](*tensors, *scalars, **kwargs)`, with all but
    the tensors fixed when the plan is made (no per-call grid, config or kwargs work).

    Triton's JIT launch binds and specializes every parameter on every call (~45 for the
    implicit GEMM), formats its options into a cache key and looks the compiled kernel up:
    most of a small layer's host time (benchmarks/triton_launch.py). Within one plan the
    scalars, constexprs and options never change (the plan key holds shapes, strides and
    conv parameters), so all that could change the binder's choice is each tensor's dtype
    and 16-byte alignment and the current device. The first launch per such signature goes
    through the JIT (compiling if needed), which returns the CompiledKernel; later ones call
    that kernel's own launcher, CompiledKernel[grid](*args), where JITFunction.run ends too.

    Before a compiled kernel is reused it is checked once: launched directly into a second
    output buffer, it must write bit for bit what the JIT launch wrote (the kernels are
    deterministic). If that fails or raises (another Triton's launcher convention, or
    non-finite data), this Launch stays on the JIT. The last tensor is the output, which
    the kernels only write. Host TMA descriptors (triton's TensorDescriptor) may stand for
    tensors: the launcher encodes them on every call, direct or JIT.

    Native launch: a signature whose kernel needs nothing but pointers and fixed scalars
    (native_params) is also checked launched from C++ (_C.NativeLaunch: cuLaunchKernel with
    the parameters laid out once, on torch's current stream); once it writes the JIT
    launch's bits, `native` launches every call of a known signature, no Python launcher.
    All of this is off under the interpreter, during CUDA graph capture (no check can
    synchronize there) and where DIRECT_LAUNCH is False."""

    __slots__ = ("kernel", "grid", "grid3", "scalars", "kwargs", "args_tail", "compiled",
                 "layout_ok", "native", "n_tensors")

    def __init__(self, kernel, grid, n_tensors: int, scalars, kwargs: dict, device):
        self.kernel, self.grid = kernel, tuple(grid)
        self.grid3 = (*self.grid, 1, 1)[:3]  # the compiled launcher takes all three
        self.scalars, self.kwargs = tuple(scalars), kwargs
        self.compiled = self.native = None
        self.n_tensors = n_tensors
        names = getattr(kernel, "arg_names", None)
        rest = names[n_tensors + len(self.scalars):] if names else None
        # Every parameter after the tensors and scalars given by keyword (defaults included):
        # else not the layout we know, JIT only. Known everywhere, so that the interpreter
        # tests can check a plan's launch would go direct on a GPU.
        self.layout_ok = rest is not None and all(n in kwargs for n in rest)
        if DIRECT_LAUNCH and device.type == "cuda" and not interpreting() and self.layout_ok:
            self.args_tail = self.scalars + tuple(kwargs[n] for n in rest)
            self.compiled = {}

    @property
    def direct(self) -> bool:
        """True once some call signature launches through the compiled kernel's own
        launcher (its check passed); False while every call still goes through the JIT."""
        return bool(self.compiled)

    def __call__(self, *tensors):
        native = self.native
        if native is not None and native(*tensors):
            return
        cache = self.compiled
        if cache is not None:
            key = (_current_device(), *[_signature(t) for t in tensors])
            runner = cache.get(key)
            if runner is not None:
                runner(*tensors, *self.args_tail)
                return
        if getattr(_compiling, "on", False):  # a compile-ahead thread (_plan.compile_ahead)
            jit_launch(self.kernel, self.grid, *tensors, *self.scalars, **self.kwargs)
            return
        kernel = self.kernel[self.grid](*tensors, *self.scalars, **self.kwargs)
        if cache is not None and isinstance(kernel, _CompiledKernel) and not _capturing():
            runner = kernel[self.grid3]  # binds the grid once; each call takes the stream
            same = self._same_result(lambda *args: runner(*args, *self.args_tail), tensors)
            if same:
                cache[key] = runner
                self._add_native(kernel, tensors, key[0])
            elif same is not None:
                self.compiled = None

    def _add_native(self, kernel, tensors, device):
        """Launch this signature from C++ from now on (csrc/triton_launch.cpp), once a
        native launch of it alone has written what the JIT launch wrote."""
        cls = NATIVE_LAUNCH
        if cls is None or not all(isinstance(t, torch.Tensor) for t in tensors):
            return
        variant = (device, [t.data_ptr() % 16 == 0 for t in tensors], [t.dtype for t in tensors],
                   kernel.function, 32 * kernel.metadata.num_warps, kernel.metadata.shared)
        try:
            params = native_params(kernel, (*tensors, *self.args_tail), len(tensors))
            if params is None:
                return
            trial = cls(list(self.grid3), len(tensors), params)
            trial.add_variant(*variant)
            ok = self._same_result(lambda *args: trial(*args) or _raise_no_variant(), tensors)
        except Exception:  # noqa: BLE001 - any failure keeps the Python launch
            return
        if ok:
            if self.native is None:
                self.native = cls(list(self.grid3), len(tensors), params)
            self.native.add_variant(*variant)

    def _same_result(self, launch, tensors):
        """True/False: `launch(*tensors)` (a direct launch) writes / does not write what the
        JIT launch wrote; None: no like-for-like buffer to check with (the next signature
        will be checked)."""
        out = tensors[-1]
        desc = not isinstance(out, torch.Tensor)  # a TMA descriptor of the output
        base = out.base if desc else out
        again = torch.empty_like(base)
        if again.stride() != base.stride() or again.data_ptr() % 16 != base.data_ptr() % 16:
            return None
        again.fill_(float("nan"))
        try:
            arg = dataclasses.replace(out, base=again) if desc else again
            launch(*tensors[:-1], arg)
            return torch.equal(again, base)
        except Exception:  # noqa: BLE001 - any failure just keeps the JIT launch
            return False


def _raise_no_variant():
    raise RuntimeError("native launch found no variant for its own signature")


NATIVE_LAUNCH = _native_launch_class() if DIRECT_LAUNCH else None


def _signature(t):
    """What the JIT binder specializes a launch argument on: a tensor's dtype and 16-byte
    alignment; a TMA descriptor's (host TensorDescriptor) base dtype, aligned by its own
    check."""
    if isinstance(t, torch.Tensor):  # nn.Parameter included
        return t.dtype, t.data_ptr() % 16 == 0
    return t.base.dtype, "desc"


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
