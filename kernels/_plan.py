"""The host layer every Triton kernel family shares: what runs on the CPU between an op
call and a kernel launch.

A family module (igemm.py, depthwise.py, grouped.py) holds its @triton.jit kernels, its
choices as one frozen policy object (a `Policy` subclass: tile lists, thresholds, which
variant for which layer) and one planner per op. A planner takes one geometry and the
policy, *chooses* a variant (kernel, layout detours, then a tile through `tune`), *builds*
its launches (every argument fixed once) and returns a `Plan`. `Family` keeps the plans per
geometry and policy and gives the three op entry points that fastconv/_triton.py registers.

Written once here: the plan cache, output size, operand checks, the on-disk tuner (one key
format, versioned by TUNER_SCHEMA), the grad_weight split planner, and the fixed-order
split sum that ends every grad_weight.
"""
from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from typing import Callable, Mapping

import torch
import triton

from fastconv._settings import settings

from . import _common
from ._common import (Launch, compile_only, device_name, dot_precision, gpu_time,
                      interpreting, is_channels_last, needs_int64, new_output, split_sum_args,
                      split_sum_kernel)

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# --------------------------------------------------------------------------------------
# Geometry and operand checks
# --------------------------------------------------------------------------------------
def out_hw(h, w, r, s, stride, padding, dilation):
    """Output height and width; padding is (top, bottom, left, right)."""
    ho = (h + padding[0] + padding[1] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    wo = (w + padding[2] + padding[3] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return ho, wo


def check_operands(name, a, b, groups=None):
    """Same supported dtype, 4-D, groups >= 1: what every op of every family needs."""
    if a.dtype != b.dtype:
        raise TypeError(f"fastconv.{name}: dtypes differ ({a.dtype} vs {b.dtype})")
    if a.dtype not in DTYPES:
        raise TypeError(f"fastconv.{name}: unsupported dtype {a.dtype}")
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(f"fastconv.{name}: expected 4-D tensors, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if groups is not None and groups < 1:
        raise ValueError(f"fastconv.{name}: groups must be >= 1, got {groups}")


def check_groups(name, input_size, weight_size, groups, what="input"):
    """input_size's channels are weight_size's Cg times groups, its K a multiple of them."""
    c, (k, cg) = input_size[1], weight_size[:2]
    if c != cg * groups or k % groups:
        raise ValueError(f"fastconv.{name}: {what} {tuple(input_size)} and weight "
                         f"{tuple(weight_size)} do not match groups={groups}")


def check_output(name, ho, wo):
    if ho <= 0 or wo <= 0:
        raise ValueError(f"fastconv.{name}: empty output {ho}x{wo}")


def check_grad_output(name, dy, input_size, weight_size, stride, padding, dilation):
    """grad_output has the forward's output shape for this input and weight size."""
    ho, wo = out_hw(input_size[2], input_size[3], weight_size[2], weight_size[3], stride,
                    padding, dilation)
    if tuple(dy.shape) != (input_size[0], weight_size[0], ho, wo):
        raise ValueError(f"fastconv.{name}: grad_output {tuple(dy.shape)} does not match input "
                         f"{tuple(input_size)} and weight {tuple(weight_size)}")
    return ho, wo


# --------------------------------------------------------------------------------------
# Policies and tile lists
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prefer:
    """One first-sight rule of a Tiles: where every named shape feature lies in its
    [low, high) range (None: unbounded), run the first of `tiles` (indices into the
    candidates) that the plan keeps. The features are those the planner passes to `tune`
    (see `features`): "pixels", "channels", "cg", "work", "bits", "stride"."""
    tiles: tuple
    when: Mapping = dataclasses.field(default_factory=dict)

    def applies(self, features: Mapping) -> bool:
        for name, (low, high) in self.when.items():
            v = features.get(name)
            if v is None or (low is not None and v < low) or (high is not None and v >= high):
                return False
        return True


@dataclasses.dataclass(frozen=True)
class Tiles:
    """One tuner's candidates (raced per shape on a GPU where tuning is on), the tile the
    interpreter runs, and the rules that pick a candidate for a shape seen for the first
    time without racing. A candidate is a dict of kernel constexprs plus
    num_warps/num_stages (and family markers such as KIND). The candidates are listed in
    the order of measured preference: with no rule that applies, the first one the plan
    keeps runs."""
    name: str
    candidates: tuple
    interpret: Mapping
    first_sight: tuple = ()  # Prefer rules, the first that applies decides

    def __post_init__(self):
        for rule in self.first_sight:
            if not all(0 <= i < len(self.candidates) for i in rule.tiles):
                raise ValueError(f"Tiles {self.name}: rule {rule} names no candidate")

    @functools.cached_property
    def digest(self) -> str:
        """Part of the on-disk key: a changed candidate list is tuned anew."""
        text = json.dumps([dict(c) for c in self.candidates], sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:8]

    def heuristic(self, kept: list, features: Mapping) -> dict:
        """The candidate for a shape never timed: the first rule that applies names it (its
        first tile in `kept`), else the first kept candidate."""
        for rule in self.first_sight:
            if rule.applies(features):
                for i in rule.tiles:
                    cfg = dict(self.candidates[i])
                    if cfg in kept:
                        return cfg
        return dict(kept[0])


@dataclasses.dataclass(frozen=True)
class Policy:
    """Base of each family's policy. `force` maps a Tiles name to the tile that runs
    instead of tuning (tests and experiments use it to reach every kernel variant);
    `int64` indexes in int64 whatever the tensors' size (the wide-index paths, on small
    tensors)."""
    force: Mapping = dataclasses.field(default_factory=dict)
    int64: bool = False

    def needs_int64(self, *tensors) -> bool:
        """Whether a kernel must form its element offsets in int64."""
        return self.int64 or needs_int64(*tensors)

    def forcing(self, **tiles) -> "Policy":
        """This policy with the named tuners' tiles fixed."""
        return dataclasses.replace(self, force={**self.force, **tiles})


def features(pixels, channels, cg, dtype, stride=(1, 1)) -> dict:
    """The shape features the first-sight rules (`Prefer`) read: the GEMM's rows
    ("pixels"), output channels per group ("channels"), reduction channels per group
    ("cg"), their product ("work": the output tile area to fill the GPU with), operand
    bits and the largest stride."""
    return dict(pixels=pixels, channels=channels, cg=cg, work=pixels * channels,
                bits=torch.finfo(dtype).bits, stride=max(stride))


# --------------------------------------------------------------------------------------
# The tuner: a tile per shape from the first source that has one
# --------------------------------------------------------------------------------------
# Sources, in order: policy.force; the interpreter's tile (CPU tensors); this process's
# memory; the user's tuned-tile file ($FASTCONV_CACHE_DIR/triton_tiles.json, written by
# races on this machine); the tiles shipped for this GPU (kernels/tiles/<gpu>.json); then,
# by FASTCONV_TUNE, the family's heuristic (default), a race, or compiling every candidate.
TUNER_SCHEMA = 2  # the key format below; a different schema never reads another's entries
TUNER_FILE = "triton_tiles.json"
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiles")
COMPILE_THREADS = 8  # candidates compiled at once before a race (ptxas, LLVM: GIL released)
_lock = threading.Lock()
_memory: dict = {}  # full key -> (tile, source)
_disk: dict | None = None
_shipped: dict = {}  # (directory, gpu) -> {shipped key: tile}


def tune_key(a, b, n, c, h, w, k, cg, r, s, stride, padding, dilation, groups, *tags):
    """The shape part of a tuner key (every family's): sizes, conv parameters, dtype, the
    two operands' layouts, the dot precision, and the plan's variant tags."""
    layout = ("cl" if is_channels_last(a) else "nchw") + ("cl" if is_channels_last(b) else "nchw")
    return (f"{n}x{c}x{h}x{w}|{k}x{cg}x{r}x{s}|{tuple(stride)}{tuple(padding)}"
            f"{tuple(dilation)}g{groups}|{a.dtype}|{layout}|{dot_precision(a.dtype)}"
            + "".join(f"|{t}" for t in tags if t))


def tuner_key(tiles: Tiles, gpu: str, shape_key: str) -> str:
    """The user file's key: a race's result holds for this GPU and this triton."""
    return (f"v{TUNER_SCHEMA}|{tiles.name}|{tiles.digest}|{gpu}|triton-{triton.__version__}"
            f"|{shape_key}")


def shipped_key(tiles: Tiles, shape_key: str) -> str:
    """A shipped tile's key (the file names the GPU): any triton compiles any tile, so only
    the candidate list (its digest) must be the one that was raced."""
    return f"v{TUNER_SCHEMA}|{tiles.name}|{tiles.digest}|{shape_key}"


def split_tuner_key(key: str):
    """(shipped key, gpu, triton version) of a user-file key; None for another schema."""
    parts = key.split("|", 5)
    if len(parts) < 6 or parts[0] != f"v{TUNER_SCHEMA}" or not parts[4].startswith("triton-"):
        return None
    version, name, digest, gpu, tv, shape = parts
    return f"{version}|{name}|{digest}|{shape}", gpu, tv[len("triton-"):]


def gpu_slug(gpu: str) -> str:
    """The shipped file's name for a device name: "NVIDIA H100 80GB HBM3" ->
    "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")


def cache_dir() -> str:
    return os.environ.get("FASTCONV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                "fastconv")


def tune_mode() -> str:
    """fastconv.settings.tune (FASTCONV_TUNE): "heuristic" (the default; "0", the old
    False, which took the first candidate untimed), "race" ("1", the old True) or
    "compile"."""
    return settings.tune


def _load_disk() -> dict:
    global _disk
    if _disk is None:
        try:
            with open(os.path.join(cache_dir(), TUNER_FILE)) as f:
                _disk = json.load(f)
        except (OSError, ValueError):
            _disk = {}
    return _disk


def shipped(gpu: str) -> dict:
    """The tiles shipped for this GPU, by shipped key ({} if none)."""
    where = (SHIPPED_DIR, gpu)
    table = _shipped.get(where)
    if table is None:
        try:
            with open(os.path.join(SHIPPED_DIR, gpu_slug(gpu) + ".json")) as f:
                data = json.load(f)
            table = data["tiles"] if data.get("gpu") == gpu else {}
        except (OSError, ValueError, KeyError, TypeError):
            table = {}
        _shipped[where] = table
    return table


def forget_disk() -> None:
    """Read the files again on the next miss (as a new process would)."""
    global _disk
    _disk = None
    _memory.clear()
    _shipped.clear()


def _save(key: str, cfg: dict) -> None:
    global _disk
    path = os.path.join(cache_dir(), TUNER_FILE)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:  # merge with what other processes wrote meanwhile
            with open(path) as f:
                disk = json.load(f)
        except (OSError, ValueError):
            disk = {}
        disk.update(_load_disk())
        disk[key] = cfg
        _disk = disk
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(disk, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs re-tuning


def interpreted(device) -> bool:
    """Whether this device's plans take the interpreter's tiles (CPU tensors)."""
    return interpreting() or device.type != "cuda"


def known_tile(tiles: Tiles, gpu: str, shape_key: str, kept: list, mode: str):
    """(tile, source) from the first source that knows this shape -- memory, the user's
    tuned file, the shipped tiles -- or (None, None). A heuristic choice in memory does not
    count when racing; a shipped tile counts only if the plan keeps it (a policy change
    that prunes it differently)."""
    key = tuner_key(tiles, gpu, shape_key)
    hit = _memory.get(key)
    if hit is not None and not (mode == "race" and hit[1] == "heuristic"):
        return hit
    with _lock:
        disk = _load_disk()
        if key in disk:
            _memory[key] = (disk[key], "tuned")
            return _memory[key]
    cfg = shipped(gpu).get(shipped_key(tiles, shape_key))
    if cfg is not None and cfg in kept:
        _memory[key] = (cfg, "shipped")
        return _memory[key]
    return None, None


def tune(policy: Policy, tiles: Tiles, shape_key: str, device, launch, prune=None,
         shape: Mapping | None = None) -> dict:
    """The tile for one plan, from the first source that has one (see above). `prune`
    says which candidates fit the plan, `launch(cfg)` runs the kernel once (a race times
    it, compiling compiles it), `shape` holds the features the heuristic reads (`features`).
    A race's winner is remembered in memory and in the user's file; a heuristic choice
    only in memory (nothing was measured)."""
    forced = policy.force.get(tiles.name)
    if forced is not None:
        return dict(forced)
    if interpreted(device):
        note_source("interpreting")
        return dict(tiles.interpret)
    gpu = device_name(device)
    kept = [dict(c) for c in tiles.candidates if prune is None or prune(c)]
    kept = kept or [dict(tiles.candidates[0])]
    mode = tune_mode()
    cfg, source = known_tile(tiles, gpu, shape_key, kept, mode)
    if cfg is not None:
        note_source(f"compiling the {source} tile")
        return cfg
    key = tuner_key(tiles, gpu, shape_key)
    if mode == "race" and len(kept) > 1:
        note_source(f"racing {len(kept)} {tiles.name} tiles")
        _compile_all(kept, launch, device)
        best = _race(tiles.name, key, kept, launch)
        _memory[key] = (best, "tuned")
        with _lock:
            _save(key, best)
        return best
    if mode == "compile":  # warms Triton's cache: nothing timed or remembered
        note_source(f"compiling {len(kept)} {tiles.name} tiles")
        _compile_all(kept, launch, device)
        return tiles.heuristic(kept, shape or {})
    note_source("compiling the heuristic tile")
    best = tiles.heuristic(kept, shape or {})
    _memory[key] = (best, "heuristic")
    return best


def _compile_all(candidates, launch, device) -> None:
    """Compile the candidates at once in threads, launching none (Triton's compile spends
    most of its time in LLVM and ptxas, outside the GIL). Only warms Triton's cache: a
    candidate that fails here is compiled again, or skipped, when it is timed."""
    if len(candidates) < 2:
        return

    def compile_one(cfg):
        with _on(device), compile_only():
            launch(cfg)
    workers = min(len(candidates), COMPILE_THREADS, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers,
                                               thread_name_prefix="fastconv-compile") as pool:
        for f in [pool.submit(compile_one, cfg) for cfg in candidates]:
            f.exception()  # waited for; a failure is the timing's to report


def _on(device):
    """A thread's current CUDA device (Triton compiles for the current device's target)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _race(name, key, candidates, launch):
    best, best_t, times = None, float("inf"), []
    for cfg in candidates:
        try:
            t = gpu_time(lambda: launch(cfg))
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory for this tile
            times.append((cfg, repr(e)[:80]))
            continue
        times.append((cfg, round(t * 1e3, 2)))
        if t < best_t:
            best, best_t = cfg, t
    if best is None:
        raise RuntimeError(f"fastconv: no {name} tile compiled for {key}")
    log = os.environ.get("FASTCONV_TUNE_LOG")
    if log:  # every candidate's time (us), for reading the tuning afterwards
        with open(log, "a") as f:
            f.write(json.dumps({"key": key, "times_us": times}) + "\n")
    return best


def tuned() -> dict:
    """Every tile chosen (raced, read from a file, or by the heuristic) in this process,
    by full key."""
    return {k: cfg for k, (cfg, _) in _memory.items()}


def tile_sources() -> dict:
    """Where each of this process's tiles came from ("tuned", "shipped", "heuristic"), by
    full key."""
    return {k: source for k, (_, source) in _memory.items()}


def launch_meta(cfg: dict, markers=("KIND", "NCHW")) -> tuple[dict, dict]:
    """Split a tile into kernel constexprs and launch options, less the family's markers
    (keys that pick a kernel or a candidate list, not kernel parameters)."""
    meta = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages", *markers)}
    opts = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    return meta, opts


# --------------------------------------------------------------------------------------
# First sight: a plan made (and its kernel compiled) on an op's first call with a shape
# --------------------------------------------------------------------------------------
# A converted model's first step makes some 60 plans; each compiles a kernel (0.2-1 s on
# an H100) and, when racing, times a dozen. A step silent for that long reads as a hang,
# so a plan that takes longer than the notice threshold says what it is doing: one line
# on the "fastconv" logger at WARNING (what Python prints when logging is not set up),
# with the tally of slow first sights so far. fastconv.settings.first_sight_notice
# (FASTCONV_FIRST_SIGHT_NOTICE) sets the threshold in seconds (None, "off": never).
logger = logging.getLogger("fastconv")
clock = time.monotonic
_sight = threading.local()  # the FirstSight in progress on this thread
_tally = {"plans": 0, "slow": 0, "seconds": 0.0, "slow_seconds": 0.0}
_tally_lock = threading.Lock()


def notice_after() -> float | None:
    """Seconds a first sight may take before it is announced; None: never announced."""
    return settings.first_sight_notice


def note_source(what: str) -> None:
    """What the first sight in progress is doing (the tuner says: racing, compiling...)."""
    sight = getattr(_sight, "current", None)
    if sight is not None:
        sight.what = what


def first_sight_stats() -> dict:
    """Plans made in this process, how many took longer than the notice threshold, and
    their seconds."""
    with _tally_lock:
        return dict(_tally)


_OPERANDS = {"forward": ("input", "weight"), "grad_input": ("grad_output", "weight"),
             "grad_weight": ("grad_output", "input")}


def _describe(op, a, b, stride, padding, dilation, groups) -> str:
    """The op and its operands in words, e.g. 'forward, input 32x64x56x56 bfloat16
    channels_last, weight 64x64x3x3, stride (1, 1), padding (1, 1)'."""
    layout = "channels_last" if is_channels_last(a) else "NCHW"
    dtype = str(a.dtype).replace("torch.", "")
    pad = tuple(padding)
    pad = pad[::2] if pad[0::2] == pad[1::2] else pad  # (t, b, l, r) -> (h, w) if symmetric
    first, second = _OPERANDS[op]
    return (f"{op}, {first} {'x'.join(map(str, a.shape))} {dtype} {layout}, {second} "
            f"{'x'.join(map(str, b.shape))}, stride {tuple(stride)}, padding {pad}"
            + (f", dilation {tuple(dilation)}" if tuple(dilation) != (1, 1) else "")
            + (f", groups {groups}" if groups != 1 else ""))


class FirstSight:
    """Times one plan's making and first run; announces it once if it stalls (from a timer
    thread while it is still going, else when it ends). A burst of slow first calls (a
    model's first step) ends with one summary line, once no first call has started for
    SUMMARY_AFTER_S."""

    def __init__(self, family: str, op: str, *conv):
        self.family, self.op, self.conv = family, op, conv
        self.what = "compiling"
        self.announced = False
        self.lock = threading.Lock()
        self.timer = None

    def __enter__(self):
        _hold_summary()
        self.after = notice_after()
        self.outer = getattr(_sight, "current", None)
        _sight.current = self
        self.start = clock()
        if self.after is not None and self.after > 0:
            self.timer = threading.Timer(self.after, self.announce)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.cancel()
        _sight.current = self.outer
        took = clock() - self.start
        slow = self.after is not None and took >= self.after
        if slow and exc[0] is None:
            self.announce(took)
        with _tally_lock:
            _tally["plans"] += 1
            _tally["seconds"] += took
            if slow:
                _tally["slow"] += 1
                _tally["slow_seconds"] += took
                _burst["slow"] += 1
                _burst["seconds"] += took
                _burst["what"][self.what] += 1
        _release_summary()
        return False

    def announce(self, took=None):
        with self.lock:
            if self.announced:
                return
            self.announced = True
        with _tally_lock:
            slow, seconds = _tally["slow"], _tally["slow_seconds"]
        when = (f"took {took:.1f} s" if took is not None
                else f"{clock() - self.start:.1f} s so far")
        logger.warning("fastconv: first call of triton_%s %s: %s (%s; before it: %d slow "
                       "first calls, %.1f s)", self.family, _describe(self.op, *self.conv),
                       self.what, when, slow, seconds)


SUMMARY_AFTER_S = 2.0  # no first call for this long: the burst is over (or the process ends)
_burst = {"slow": 0, "seconds": 0.0, "what": collections.Counter()}
_summary_timer = None


def _hold_summary() -> None:
    """A first call starts: the burst goes on, its summary waits."""
    global _summary_timer
    with _tally_lock:
        if _summary_timer is not None:
            _summary_timer.cancel()
            _summary_timer = None


def _release_summary() -> None:
    global _summary_timer
    with _tally_lock:
        if _burst["slow"] and _summary_timer is None:
            _summary_timer = threading.Timer(SUMMARY_AFTER_S, summarize)
            _summary_timer.daemon = True
            _summary_timer.start()


def summarize() -> None:
    """Log the burst of slow first calls that ended (if more than one) and start anew."""
    global _summary_timer
    with _tally_lock:
        slow, seconds, what = _burst["slow"], _burst["seconds"], _burst["what"]
        _burst.update(slow=0, seconds=0.0, what=collections.Counter())
        _summary_timer = None
    if slow > 1:
        logger.warning("fastconv: %d slow first calls took %.1f s in all (%s); their plans "
                       "and kernels are kept, later calls with these shapes do not wait",
                       slow, seconds, ", ".join(f"{w}: {n}" for w, n in what.most_common()))


atexit.register(summarize)  # a script that ends within SUMMARY_AFTER_S of its last stall


# --------------------------------------------------------------------------------------
# Compile ahead (opt-in, settings.compile_ahead): a forward's first sight starts compiling
# its two gradients' kernels in background threads, so that the backward finds them
# compiled instead of compiling them one after the other
# --------------------------------------------------------------------------------------
AHEAD_THREADS = 4
_ahead_pool = None
_ahead: list = []  # futures of the compiles in flight
_ahead_stats = {"started": 0, "done": 0, "failed": 0}


def compile_ahead(fam, x, w, y, stride, padding, dilation, groups) -> None:
    """Plan and compile (not run) grad_input and grad_weight for a forward's operands in a
    thread pool. dy is taken to be laid out as y; where autograd hands the backward another
    layout, the backward compiles its own kernel and this work is only lost. The plans are
    not kept: the backward plans again (cheaply) and finds the kernels in Triton's cache."""
    global _ahead_pool
    if tune_mode() != "heuristic":  # a race times on this thread, with nothing else running
        return
    dy = torch.empty_like(y)  # on this thread: the worker allocates nothing the caller sees
    policy, size_x, size_w = fam.policy, tuple(x.shape), tuple(w.shape)
    jobs = []
    if x.requires_grad:
        jobs.append(lambda: fam.plan_grad_input(dy, w, size_x, stride, padding, dilation,
                                                groups, policy).run(dy, w))
    if w.requires_grad:
        jobs.append(lambda: fam.plan_grad_weight(dy, x, size_w, stride, padding, dilation,
                                                 groups, policy).run(dy, x))

    def run(job):
        try:
            # a stream of its own: the weight copies and allocations a plan's run makes
            # must not queue behind (or ahead of) the caller's work
            stream = torch.cuda.Stream(x.device) if x.device.type == "cuda" else None
            with _on(x.device), (torch.cuda.stream(stream) if stream is not None
                                 else contextlib.nullcontext()), compile_only():
                job()
            if stream is not None:
                stream.synchronize()
            key = "done"
        except Exception:  # noqa: BLE001 - only a head start lost; the backward compiles
            logger.debug("fastconv: compile ahead failed", exc_info=True)
            key = "failed"
        with _tally_lock:
            _ahead_stats[key] += 1
    with _tally_lock:
        if _ahead_pool is None:
            _ahead_pool = concurrent.futures.ThreadPoolExecutor(
                AHEAD_THREADS, thread_name_prefix="fastconv-ahead")
        _ahead_stats["started"] += len(jobs)
        _ahead[:] = [f for f in _ahead if not f.done()]
        _ahead.extend(_ahead_pool.submit(run, job) for job in jobs)


def wait_ahead() -> None:
    """Wait for the compiles started ahead (a backward's first sight: its kernel may be
    among them, and no background work may outlast the step into a CUDA graph capture)."""
    with _tally_lock:
        pending = list(_ahead)
        _ahead.clear()
    concurrent.futures.wait(pending)


def ahead_stats() -> dict:
    with _tally_lock:
        return dict(_ahead_stats)


# --------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------
def _copy(t, order):
    """t's values laid out with its dims in `order`, outermost first (None: t)."""
    if order is None:
        return t
    return t.permute(order).contiguous().permute([order.index(d) for d in range(len(order))])


@dataclasses.dataclass(frozen=True)
class Steps:
    """A plan's call as data, for its C++ form (_C.NativePlan, csrc/triton_launch.cpp):
    buffers [(size, channels_last, dtype or the slot whose dtype it takes), or ("copy",
    slot, order): that slot's values laid out with its dims in `order`, outermost first],
    launches [(Launch, slots)] and the result slot, over slots (a, b, bias-or-b, buffers...);
    result_order: the result is copied into that dim order after the launches."""
    buffers: tuple
    launches: tuple
    result: int
    result_order: tuple = None

    def reference(self, a, b, c=None):
        """What _C.NativePlan does with these steps, in Python (tests compare it with the
        plan's own run)."""
        slots = [a, b, b if c is None else c]
        for size, cl, dtype in self.buffers:
            if size == "copy":
                slots.append(_copy(slots[cl], dtype))
                continue
            like = slots[dtype] if isinstance(dtype, int) else a
            slots.append(new_output(size, like, cl, None if isinstance(dtype, int) else dtype))
        for launch, ids in self.launches:
            launch(*[slots[i] for i in ids])
        return _copy(slots[self.result], self.result_order)


# Dim orders (outermost first) of Steps' copies: NCHW-contiguous and channels_last.
CONTIGUOUS = (0, 1, 2, 3)
CHANNELS_LAST = (0, 2, 3, 1)


def steps_on_copies(inner: "Plan", a=None, b=None, out=None):
    """The Steps of a plan that runs `inner` on copies of its operands laid out in dim
    orders `a` and `b` (None: the operand itself) and copies inner's result into order
    `out` (None: as inner returns it); None where inner has no Steps."""
    st = inner.steps
    if st is None:
        return None
    buffers = [("copy", i, order) for i, order in enumerate((a, b)) if order is not None]
    where = {0: 3 if a is not None else 0, 2: 2}
    where[1] = 3 + (a is not None) if b is not None else 1
    base = 3 + len(buffers)
    for i, (size, cl, dtype) in enumerate(st.buffers):
        where[3 + i] = base + i
    for size, cl, dtype in st.buffers:
        if size == "copy":
            buffers.append(("copy", where[cl], dtype))
        else:
            buffers.append((size, cl, where[dtype] if isinstance(dtype, int) else dtype))
    launches = tuple((launch, tuple(where[i] for i in slots)) for launch, slots in st.launches)
    if out is not None and st.result_order is not None:
        return None
    return Steps(buffers=tuple(buffers), launches=launches, result=where[st.result],
                 result_order=out if out is not None else st.result_order)


class Plan:
    """One geometry's prepared call: plan(*tensors) -> output, and every Launch it calls
    (kernels/_common.Launch: arguments fixed, direct launch after the first call).

    `run` is the call in Python. A plan whose call is also given as `steps` runs in C++
    once each of its Launches launches natively (from the second call on): no Python
    between the plan lookup and cuLaunchKernel. Where the C++ plan declines (a new
    pointer alignment, a non-contiguous bias) or outputs are poisoned, `run` runs."""
    __slots__ = ("run", "launches", "steps", "native", "_tries")

    def __init__(self, run: Callable, *launches: Launch, steps: Steps = None):
        self.run = run
        self.launches = launches
        self.steps = steps
        self.native = None
        self._tries = 0

    def __call__(self, *tensors):
        native = self.native
        if native is not None and not _common.POISON:
            out = native(*tensors)
            if out is not None:
                return out
        out = self.run(*tensors)
        if native is None and self._tries < 3:
            self._make_native()
        return out

    def _make_native(self) -> None:
        steps = self.steps
        if steps is None or _common.NATIVE_LAUNCH is None:
            self._tries = 3  # this plan stays in Python: stop checking
            return
        self._tries += 1  # a Launch that is not native after its third call never will be
        if any(launch.native is None for launch, _ in steps.launches):
            return  # not yet: each Launch goes native after its first call's check
        try:
            self.native = native_plan(steps, [launch.native for launch, _ in steps.launches])
        except RuntimeError as e:  # a Steps that C++ refuses is fastconv's bug, not the caller's
            self._tries = 3
            warnings.warn(f"fastconv: a kernel plan stays on its Python launch path: its C++ form "
                          f"was refused ({e}). The results are unaffected; please report this.",
                          RuntimeWarning, stacklevel=2)


def empty_plan(size, channels_last: bool, zeros=False) -> Plan:
    """The plan of a conv with nothing to compute: an output of `size` like the first
    argument (zeros for a gradient over an empty reduction)."""
    if zeros:
        return Plan(lambda a, b, *rest: torch.zeros(size, dtype=b.dtype, device=b.device))
    return Plan(lambda a, *rest: new_output(size, a, channels_last))


def split_reduction(length, block, tiles, programs, min_blocks=1):
    """(split, chunk) of a reduction over `length` elements (grad_weight's pixels) cut into
    chunks of `chunk`, a multiple of `block`, one program each per output tile, so that
    tiles x split comes near `programs` (a multiple of the SM count), each chunk at least
    `min_blocks` blocks long. The last chunk may be partial; split is the chunk count."""
    want = max(1, programs // tiles)
    split = max(1, min(want, triton.cdiv(length, min_blocks * block)))
    chunk = triton.cdiv(triton.cdiv(length, split), block) * block
    return triton.cdiv(length, chunk), chunk


def split_sum(part_size, device, k=None) -> Launch:
    """The Launch of split_sum_kernel(part, out): the fixed-order (deterministic) sum of
    partials [split, ...]; k transposes [taps, k] partials into [k, taps] (depthwise)."""
    grid, scalars, kw = split_sum_args(part_size, k)
    return Launch(split_sum_kernel, grid, 2, scalars, kw, device)


def grad_weight_plan(kernel: Launch, part_size, part_dtype, weight_size, device, k=None) -> Plan:
    """A split grad_weight's run: the kernel writes every partial of part [split, ...],
    then split_sum adds them in a fixed order into the weight-shaped output."""
    reduce = split_sum(part_size, device, k)
    size = tuple(weight_size)

    def run(dy, x):
        part = torch.empty(part_size, dtype=part_dtype, device=device)
        kernel(dy, x, part)
        dw = new_output(size, x, False)
        reduce(part, dw)
        return dw
    steps = Steps(buffers=((part_size, False, part_dtype), (size, False, 1)),
                  launches=((kernel, (0, 1, 3)), (reduce, (3, 4))), result=4)
    return Plan(run, kernel, reduce, steps=steps)


def output_steps(launch: Launch, size, channels_last: bool, slots) -> Steps:
    """Steps of the common plan: one output like a (new_output(size, a, channels_last)),
    written by one launch over `slots` of (a, b, bias-or-b, output)."""
    return Steps(buffers=((tuple(size), channels_last, 0),), launches=((launch, tuple(slots)),),
                 result=3)


class PlanCache(dict):
    """plan key -> Plan: repeated calls skip checks, tuning lookups and index-width
    analysis (host overhead is what small layers are made of)."""
    MAX = 4096

    def __setitem__(self, key, value):
        if len(self) >= self.MAX:
            self.clear()
        super().__setitem__(key, value)


def native_plan(steps: Steps, launches: list):
    """_C.NativePlan of `steps`, each of its Launches run by the _C.NativeLaunch in
    `launches` (in order)."""
    return importlib.import_module("fastconv._C").NativePlan(
        [b if b[0] == "copy" else (tuple(b[0]), b[1], b[2]) for b in steps.buffers],
        [(native, list(slots)) for native, (_, slots) in zip(launches, steps.launches)],
        steps.result, list(steps.result_order or ()))


# torch.backends.cudnn.allow_tf32 is a module property costing ~0.5 us a read; the getter
# behind it (present in every torch this supports) costs a sixth of that.
_allow_tf32 = getattr(torch._C, "_get_cudnn_allow_tf32", None) or (
    lambda: torch.backends.cudnn.allow_tf32)


def plan_key(a, b, bias, stride, padding, dilation, groups, extra):
    """Everything a plan depends on: shapes, strides, dtype, device, conv parameters, the
    TF32 flag and whether there is a bias (its values and pointers are the call's own)."""
    return (a.shape, a.stride(), b.shape, b.stride(), a.dtype, b.dtype, a.device,
            tuple(stride), tuple(padding), tuple(dilation), groups, extra, bias is None,
            _allow_tf32())


def _grad_entry(fam, cache: str, planner, op: str):
    """A gradient op's entry: (grad_output, weight or input, the other operand's size, ...)."""
    def entry(dy, t, size, stride, padding, dilation, groups):
        plans = getattr(fam, cache)
        key = plan_key(dy, t, None, stride, padding, dilation, groups, tuple(size))
        plan = plans.get(key)
        if plan is None:
            with FirstSight(fam.name, op, dy, t, stride, padding, dilation, groups):
                if _ahead:
                    note_source("waiting for the gradients' kernels compiled ahead")
                    wait_ahead()
                plan = plans[key] = planner(dy, t, tuple(size), stride, padding, dilation,
                                            groups, fam.policy)
                return plan(dy, t)
        return plan(dy, t)
    return entry


# The C++ autograd of training calls (_C.NativeConv) has not yet run on a GPU: opt-in with
# FASTCONV_NATIVE_AUTOGRAD=1 until tests/test_triton_gpu.py has passed on one.
NATIVE_AUTOGRAD = os.environ.get("FASTCONV_NATIVE_AUTOGRAD", "0") == "1"


def _native_conv(fam, key, plan: Plan, x, w, stride, padding, dilation, groups, ops):
    """The _C.NativeConv of a forward plan: its Python fallbacks are the plan's own run and
    the family's grad entries (the registered `ops` under create_graph), which hand their
    plans to the NativeConv once both run natively."""
    input_size, weight_size = tuple(x.shape), tuple(w.shape)
    conv_args = (stride, padding, dilation, groups)

    def backward(dy, x, w, need_in, need_w):
        direct = not torch.is_grad_enabled()
        gin, gw = ((fam.conv2d_grad_input, fam.conv2d_grad_weight) if direct else ops[1:])
        g_in = gin(dy, w, input_size, *conv_args) if need_in else None
        g_w = gw(dy, x, weight_size, *conv_args) if need_w else None
        conv = fam.native_convs.get(key)
        if direct and conv is not None:
            p_in = fam.grad_input_plans.get(plan_key(dy, w, None, *conv_args, input_size))
            p_w = fam.grad_weight_plans.get(plan_key(dy, x, None, *conv_args, weight_size))
            n_in = p_in.native if p_in is not None else None
            n_w = p_w.native if p_w is not None else None
            if (n_in is not None or not need_in) and (n_w is not None or not need_w):
                conv.set_grad_plans(n_in, n_w, dy)
        return g_in, g_w

    return importlib.import_module("fastconv._C").NativeConv(plan.native, plan.run, backward)


class Family:
    """A kernel family's three op entry points (`conv2d`, `conv2d_grad_input`,
    `conv2d_grad_weight`, with the ops' signatures), each with a plan cache per policy.

    planners: forward(x, w, bias, stride, padding, dilation, groups, activation, policy),
    grad_input(dy, w, input_size, ..., groups, policy) and grad_weight(dy, x, weight_size,
    ..., groups, policy), each returning a Plan. `using(policy)` runs a block under another
    policy (its own plans); `policy` is the one in force."""

    def __init__(self, name: str, policy: Policy, forward, grad_input, grad_weight):
        self.name = name
        self.default = policy
        # The planners themselves (experiments build one plan under a given policy).
        self.plan_forward, self.plan_grad_input, self.plan_grad_weight = (
            forward, grad_input, grad_weight)
        self._states: dict = {}
        self._use(policy)
        fam = self

        def conv2d(x, w, bias, stride, padding, dilation, groups, activation="none"):
            plans = fam.fwd_plans
            key = plan_key(x, w, bias, stride, padding, dilation, groups, activation)
            plan = plans.get(key)
            if plan is None:
                with FirstSight(name, "forward", x, w, stride, padding, dilation, groups):
                    plan = plans[key] = forward(x, w, bias, stride, padding, dilation, groups,
                                                activation, fam.policy)
                    y = plan(x, w, bias)
                if (x.requires_grad or w.requires_grad) and settings.compile_ahead:
                    compile_ahead(fam, x, w, y, stride, padding, dilation, groups)
                return y
            return plan(x, w, bias)

        def conv2d_train(x, w, bias, stride, padding, dilation, groups, ops):
            """conv2d (no activation) with its autograd in C++ (_C.NativeConv): once the
            forward's plan runs natively, a training call and its backward run no Python.
            None where the caller's Python autograd must run (the first calls of a shape,
            poisoned outputs)."""
            if _common.POISON or not NATIVE_AUTOGRAD:
                return None
            key = plan_key(x, w, bias, stride, padding, dilation, groups, "none")
            conv = fam.native_convs.get(key)
            if conv is None:
                plan = fam.fwd_plans.get(key)
                if plan is None or plan.native is None:
                    return None
                conv = fam.native_convs[key] = _native_conv(fam, key, plan, x, w, stride, padding,
                                                            dilation, groups, ops)
            return conv(x, w, bias)

        self.conv2d = conv2d
        self.conv2d_train = conv2d_train
        self.conv2d_grad_input = _grad_entry(self, "grad_input_plans", grad_input, "grad_input")
        self.conv2d_grad_weight = _grad_entry(self, "grad_weight_plans", grad_weight,
                                              "grad_weight")

    def entries(self):
        """(conv2d, conv2d_grad_input, conv2d_grad_weight): what the family module exports."""
        return self.conv2d, self.conv2d_grad_input, self.conv2d_grad_weight

    def _use(self, policy: Policy) -> None:
        # Keyed by identity: a policy's fields may be dicts (unhashable). The state holds
        # the policy, so its id stays unique while the state lives.
        state = self._states.get(id(policy))
        if state is None:
            state = self._states[id(policy)] = (policy, PlanCache(), PlanCache(), PlanCache(),
                                                PlanCache())
        (self.policy, self.fwd_plans, self.grad_input_plans, self.grad_weight_plans,
         self.native_convs) = state

    @contextlib.contextmanager
    def using(self, policy: Policy):
        """Plan (and run) the calls in this block under `policy`."""
        old = self.policy
        self._use(policy)
        try:
            yield policy
        finally:
            self._use(old)
            if policy is not self.default and policy is not old:
                self._states.pop(id(policy), None)

    def plans(self) -> list:
        """Every plan made under the policy in force (forward, grad_input, grad_weight)."""
        return [p for cache in (self.fwd_plans, self.grad_input_plans, self.grad_weight_plans)
                for p in cache.values()]

    def clear(self) -> None:
        for cache in (self.fwd_plans, self.grad_input_plans, self.grad_weight_plans,
                      self.native_convs):
            cache.clear()
