"""Runs the suites: every layer against every candidate, in one process, one row per
(layer, pass, fastconv algorithm) with that layer's baselines repeated on each row."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .. import registry
from ..spec import ConvSpec
from . import baselines, health, machine, tables
from .timing import CPU_MIN_RUN_TIME_S, GPU_REP_MS, Timing, measure

# Tensors a baseline may allocate before we skip it (F.unfold's columns and the GEMM's A operand
# are C·R·S/stride² times the input: 1.5 GB for RepLKNet's 31x31 layer at batch 1).
OPERAND_BYTES_LIMIT = {"cpu": 1 << 30, "cuda": 16 << 30}
# Largest relative error (max |out - ref| / max |ref|, ref = F.conv2d in float64) we accept.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
TOLERANCE_TF32 = 5e-3
QUICK_MIN_RUN_TIME_S = 0.1
QUICK_GPU_REP_MS = 40
DEFAULT_BATCH = {"cpu": 1, "cuda": 32}


@dataclass
class Options:
    device: str = "cpu"
    suites: Sequence[str] = ("all",)
    dtype: torch.dtype = torch.float32
    layout: str = "nchw"
    batch: Optional[int] = None
    algos: Optional[Sequence[str]] = None  # None: every applicable public algorithm; "auto": its pick
    backward: bool = False
    quick: bool = False
    repeats: int = 5
    threads: Optional[int] = None  # None: torch's default, capped by the CPUs the load leaves idle
    tf32: bool = True
    progress: bool = True
    measure_ceilings: bool = True
    copy_mib: Optional[int] = None  # ceiling copy size; None: twice the last-level cache
    seed: int = 0


@dataclass
class Result:
    header: dict
    rows: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (suite, layer, algo, reason)


def _fmt_pair(p) -> str:
    return str(p[0]) if len(set(p)) == 1 else "x".join(map(str, p))


def _fmt_pad(p) -> str:
    return str(p[0]) if len(set(p)) == 1 else ",".join(map(str, p))


def _geometry(layer: tables.Layer) -> dict:
    s = layer.spec
    return {
        "suite": layer.suite, "layer": layer.name, "count": layer.count,
        "N": s.N, "C": s.C, "H": s.H, "W": s.W, "K": s.K, "R": s.R, "S": s.S,
        "stride": _fmt_pair(s.stride), "padding": _fmt_pad(s.padding), "dilation": _fmt_pair(s.dilation),
        "groups": s.groups, "Ho": s.Ho, "Wo": s.Wo, "device": s.device,
        "dtype": str(s.dtype).replace("torch.", ""), "layout": s.layout,
    }


def _nan_timing(prefix: str) -> dict:
    return {f"{prefix}_ms": math.nan, f"{prefix}_q25_ms": math.nan, f"{prefix}_q75_ms": math.nan,
            f"{prefix}_min_ms": math.nan, f"{prefix}_max_ms": math.nan, f"{prefix}_n": 0}


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.to(torch.float64)
    diff = (out.to(torch.float64) - ref).abs().max().item()
    return diff / max(ref.abs().max().item(), 1e-30)


def default_algorithms(spec: ConvSpec) -> list[registry.Algorithm]:
    return [a for a in registry.applicable(spec) if spec.device in a.devices]


class Runner:
    def __init__(self, opts: Options):
        self.o = opts
        self.device = opts.device
        self.load_at_start = health.loadavg()
        if opts.threads is not None:
            self.threads, self.threads_from = opts.threads, "--threads"
        elif self.device == "cpu":
            self.threads = health.default_threads(os.cpu_count() or 1, self.load_at_start,
                                                  torch.get_num_threads())
            self.threads_from = (f"torch's default {torch.get_num_threads()}, capped by the idle "
                                 f"CPUs (load average {self.load_at_start})")
        else:
            self.threads, self.threads_from = torch.get_num_threads(), "torch's default"
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = opts.tf32
            torch.backends.cudnn.allow_tf32 = opts.tf32
        self.min_run_time = QUICK_MIN_RUN_TIME_S if opts.quick else CPU_MIN_RUN_TIME_S
        self.rep_ms = QUICK_GPU_REP_MS if opts.quick else GPU_REP_MS
        self.tol = TOLERANCE[opts.dtype]
        if self.device == "cuda" and opts.dtype == torch.float32 and opts.tf32:
            self.tol = TOLERANCE_TF32

    # -- what to run ---------------------------------------------------------------------------
    def layers(self) -> list[tables.Layer]:
        out = []
        for suite in tables.expand(self.o.suites):
            out += tables.load(suite, batch=self.o.batch, default_batch=DEFAULT_BATCH[self.device],
                               dtype=self.o.dtype, layout=self.o.layout, device=self.device,
                               quick=self.o.quick)
        return out

    def algorithms(self, spec: ConvSpec) -> tuple[list[registry.Algorithm], list[tuple[str, str]]]:
        """(algorithms to time, [(name, reason)] of those asked for that don't apply).

        By default every applicable public algorithm, except those that would only run interpreted
        (Triton under TRITON_INTERPRET=1 on a CPU): timing an interpreter measures nothing."""
        if self.o.algos is None:
            return default_algorithms(spec), []
        run, skip = [], []
        for name in self.o.algos:
            if name == "auto":  # what fastconv.conv2d(algo="auto") runs for this layer
                from ..functional import select

                try:
                    alg = select(spec, "auto")
                except (TypeError, ValueError) as e:
                    skip.append((name, str(e)))
                    continue
            else:
                alg = registry.get(name)
                reason = alg.why_not(spec)
                if reason is not None:
                    skip.append((name, reason))
                    continue
            if alg not in run:
                run.append(alg)
        return run, skip

    def passes(self) -> list[str]:
        return ["fwd", "fwd+bwd"] if self.o.backward else ["fwd"]

    # -- timing --------------------------------------------------------------------------------
    def time(self, fn, warmup: int = 1, threads: Optional[int] = None) -> Timing:
        return measure(fn, self.device, repeats=self.o.repeats, min_run_time=self.min_run_time,
                       rep_ms=self.rep_ms, threads=threads or self.threads, warmup=warmup)

    def header(self) -> dict:
        h = machine.describe(self.device, self.o.dtype, self.threads)
        h.update(layout=self.o.layout, batch=self.o.batch if self.o.batch is not None else
                 f"table N, else {DEFAULT_BATCH[self.device]}", quick=self.o.quick, repeats=self.o.repeats,
                 **{"pass": ", ".join(self.passes())})
        h["threads_from"] = self.threads_from
        h["warnings"] = []
        if self.device == "cpu":
            w = health.load_warning(self.load_at_start, os.cpu_count() or 1, self.threads)
            if w:
                h["warnings"].append(f"at start: {w}")
        h["timing"] = ("triton.testing.do_bench (L2 flushed), median of per-call CUDA-event times"
                       if self.device == "cuda" else
                       f"torch.utils.benchmark blocked_autorange (min_run_time {self.min_run_time}s, "
                       f">= {self.o.repeats} blocks), median of per-call block times")
        h["inputs"] = f"{baselines.ROTATE} fresh torch.randn inputs rotated per call"
        if self.o.measure_ceilings:
            h["ceilings"] = machine.ceilings(self.device, self.o.dtype, self.threads,
                                             copy_nbytes=(self.o.copy_mib or 0) << 20 or None)
        return h

    def run_layer(self, layer: tables.Layer, pss: str, result: Result) -> list[dict]:
        """The layer's rows. On the CPU each row is checked (fastconv/bench/health.py); a layer
        with a failing row is measured again, up to health.RETRIES times, and what still fails
        keeps its reasons in `warning` (and `oversubscribed` when threads collapsed)."""
        for attempt in range(1 + health.RETRIES):
            skipped: list = []
            rows = self._measure_layer(layer, pss, skipped)
            for r in rows:
                reasons = health.row_warnings(r, self.threads) if self.device == "cpu" else []
                r.update(warning="; ".join(reasons), oversubscribed=health.is_oversubscribed(reasons),
                         measured=attempt + 1)
            if not any(r["warning"] for r in rows):
                break
        result.skipped.extend(skipped)
        return rows

    def _measure_layer(self, layer: tables.Layer, pss: str, skipped: list) -> list[dict]:
        spec, backward = layer.spec, pss == "fwd+bwd"
        torch.manual_seed(self.o.seed)
        xs, w = baselines.make_inputs(spec, seed=self.o.seed)
        base = _geometry(layer)
        base["pass"] = pss
        mult = 3 if backward else 1  # grad_input and grad_weight each cost one forward's FLOPs
        flops, nbytes = spec.flops * mult, spec.min_bytes * mult
        base.update(flops=flops, min_bytes=nbytes, intensity=spec.flops / spec.min_bytes)
        limit = OPERAND_BYTES_LIMIT[self.device]

        # PyTorch's own convolution, and the float64 reference for the error check.
        conv = baselines.torch_conv_fn(spec)
        ref = conv(xs[0].double(), w.double()) if not backward else None
        base["torch_backend"] = baselines.torch_backend(spec, xs[0], w)
        t = self.time(baselines.candidate(conv, xs, w, backward))
        base.update(t.as_dict("torch"))
        # The calibration: the same conv on one thread, which other processes cannot make
        # collapse. More threads slower than one means the CPUs are oversubscribed.
        base["torch_1t_ms"] = math.nan
        if self.device == "cpu" and self.threads > 1:
            base["torch_1t_ms"] = self.time(baselines.candidate(conv, xs, w, backward),
                                            threads=1).median_ms

        # The equivalent GEMM (mm, or bmm over groups) and the same GEMM through nn.Linear.
        m, n, k = spec.gemm_shape
        a_bytes = spec.groups * m * k * spec.element_size
        gemm_op, gemm = baselines.gemm_fn(spec)
        base["gemm_op"] = f"{gemm_op} {'' if spec.groups == 1 else f'{spec.groups}x'}{m}x{k} @ {k}x{n}"
        if a_bytes <= limit:
            pool = max(1, min(baselines.ROTATE, limit // max(a_bytes, 1)))
            a_pool, b = baselines.gemm_operands(spec, n=pool, seed=self.o.seed + 1)
            base.update(self.time(baselines.candidate(gemm, a_pool, b, backward)).as_dict("gemm"))
            if spec.groups == 1 and layer.suite == "conv_vs_linear":
                lin = baselines.linear_fn(spec)
                base.update(self.time(baselines.candidate(lin, a_pool, b.t().contiguous(), backward))
                            .as_dict("linear"))
            else:
                base.update(_nan_timing("linear"))
            del a_pool, b
        else:
            skipped.append((layer.suite, layer.name, "gemm", f"operand A is {a_bytes >> 20} MiB"))
            base.update(_nan_timing("gemm"), **_nan_timing("linear"))

        # F.unfold + matmul: the columns are as large as the GEMM's A.
        if a_bytes <= limit:
            base.update(self.time(baselines.candidate(baselines.unfold_fn(spec), xs, w, backward))
                        .as_dict("unfold"))
        else:
            skipped.append((layer.suite, layer.name, "unfold", f"columns are {a_bytes >> 20} MiB"))
            base.update(_nan_timing("unfold"))

        for k_ in ("torch", "gemm", "unfold", "linear"):
            ms = base[f"{k_}_ms"]
            base[f"{k_}_gflops"] = flops / (ms * 1e-3) / 1e9 if ms == ms else math.nan

        algs, skip = self.algorithms(spec)
        for name, reason in skip:
            skipped.append((layer.suite, layer.name, name, reason))
        rows = []
        for alg in algs:
            fn = baselines.fastconv_fn(alg, spec)
            row = dict(base, algo=alg.name)
            if ref is not None:  # this first call is also the warm-up
                err = _rel_err(fn(xs[0], w), ref)
                row.update(max_rel_err=err, ok=bool(err <= self.tol))
            else:
                row.update(max_rel_err=math.nan, ok=True)
            t = self.time(baselines.candidate(fn, xs, w, backward), warmup=0 if ref is not None else 1)
            row.update(t.as_dict("time"))
            row.update(self._derived(row, flops, nbytes))
            rows.append(row)
        if not algs:  # keep the baselines even when no fastconv algorithm applies
            row = dict(base, algo="", max_rel_err=math.nan, ok=True, **_nan_timing("time"))
            row.update(self._derived(row, flops, nbytes))
            rows.append(row)
        return rows

    def stability_check(self, layer: tables.Layer, first_row: dict) -> dict:
        """Re-measure the run's first measurement (PyTorch on the first layer) at the end: its new
        median should lie within the first measurement's spread (min..max)."""
        xs, w = baselines.make_inputs(layer.spec, seed=self.o.seed)
        again = self.time(baselines.candidate(baselines.torch_conv_fn(layer.spec), xs, w,
                                              first_row["pass"] == "fwd+bwd"))
        lo, hi = first_row["torch_min_ms"], first_row["torch_max_ms"]
        # Agreeing with a first measurement that was itself collapsed proves nothing: say so.
        return {"layer": f"{layer.suite}/{layer.name}", "first_ms": first_row["torch_ms"],
                "first_min_ms": lo, "first_max_ms": hi, "again_ms": again.median_ms,
                "within_spread": bool(lo <= again.median_ms <= hi),
                "first_warning": first_row.get("warning", "")}

    @staticmethod
    def _derived(row: dict, flops: int, nbytes: int) -> dict:
        t = row["time_ms"]
        nan = math.nan
        return {
            "speedup": row["torch_ms"] / t if t == t else nan,
            "vs_gemm": row["gemm_ms"] / t if t == t else nan,
            "gflops": flops / (t * 1e-3) / 1e9 if t == t else nan,
            "gbps": nbytes / (t * 1e-3) / 1e9 if t == t else nan,
        }


def run(opts: Options, on_row=None, on_header=None) -> Result:
    """Time every layer of the chosen suites. `on_header(header)` is called once the machine is
    measured, `on_row(row, bar)` as each row completes."""
    # The run sets torch's thread count and cuDNN/TF32 flags; give the caller's back afterwards
    # (main() also runs in-process, e.g. from the test suite).
    saved = (torch.get_num_threads(), torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        return _run(opts, on_row, on_header)
    finally:
        torch.set_num_threads(saved[0])
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved[1:]


def _run(opts: Options, on_row, on_header) -> Result:
    from tqdm import tqdm

    r = Runner(opts)
    layers = r.layers()
    if opts.algos is not None:
        for name in opts.algos:
            if name != "auto":
                registry.get(name)  # unknown names fail before any timing
    result = Result(header=r.header())
    if on_header is not None:
        on_header(result.header)
    work = [(layer, p) for layer in layers for p in r.passes()]
    bar = tqdm(work, desc="fastconv bench", unit="layer", disable=None if opts.progress else True,
               dynamic_ncols=True, leave=False)
    for layer, p in bar:
        bar.set_postfix_str(f"{layer.suite}/{layer.name} N={layer.spec.N} {p}")
        for row in r.run_layer(layer, p, result):
            result.rows.append(row)
            if on_row is not None:
                on_row(row, bar)
    bar.close()
    if result.rows:
        result.header["stability"] = r.stability_check(layers[0], result.rows[0])
    return result
