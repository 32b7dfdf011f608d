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

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import json
import os
import tempfile
import threading
from typing import Callable, Mapping

import torch
import triton

from . import _common
from ._common import (Launch, device_name, dot_precision, gpu_time, interpreting,
                      is_channels_last, needs_int64, new_output, split_sum_args,
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
class Tiles:
    """One tuner's candidates (raced per shape on a GPU) and the tile the interpreter runs.
    A candidate is a dict of kernel constexprs plus num_warps/num_stages (and family
    markers such as KIND)."""
    name: str
    candidates: tuple
    interpret: Mapping

    @functools.cached_property
    def digest(self) -> str:
        """Part of the on-disk key: a changed candidate list is tuned anew."""
        text = json.dumps([dict(c) for c in self.candidates], sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:8]


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


# --------------------------------------------------------------------------------------
# The tuner: a choice per shape, timed once, kept in memory and in a JSON file
# --------------------------------------------------------------------------------------
TUNER_SCHEMA = 2  # the key format below; a different schema never reads another's entries
TUNER_FILE = "triton_tiles.json"
_lock = threading.Lock()
_memory: dict = {}
_disk: dict | None = None


def tune_key(a, b, n, c, h, w, k, cg, r, s, stride, padding, dilation, groups, *tags):
    """The shape part of a tuner key (every family's): sizes, conv parameters, dtype, the
    two operands' layouts, the dot precision, and the plan's variant tags."""
    layout = ("cl" if is_channels_last(a) else "nchw") + ("cl" if is_channels_last(b) else "nchw")
    return (f"{n}x{c}x{h}x{w}|{k}x{cg}x{r}x{s}|{tuple(stride)}{tuple(padding)}"
            f"{tuple(dilation)}g{groups}|{a.dtype}|{layout}|{dot_precision(a.dtype)}"
            + "".join(f"|{t}" for t in tags if t))


def cache_dir() -> str:
    return os.environ.get("FASTCONV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                "fastconv")


def _load_disk() -> dict:
    global _disk
    if _disk is None:
        try:
            with open(os.path.join(cache_dir(), TUNER_FILE)) as f:
                _disk = json.load(f)
        except (OSError, ValueError):
            _disk = {}
    return _disk


def forget_disk() -> None:
    """Read the file again on the next miss (as a new process would)."""
    global _disk
    _disk = None
    _memory.clear()


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


def tune(policy: Policy, tiles: Tiles, shape_key: str, device, launch, prune=None) -> dict:
    """The tile for one plan: policy.force's if it names these tiles, the interpreter's on
    CPU tensors, else the fastest candidate that `prune` keeps, timed once per key
    (`launch(cfg)` runs the kernel once) and remembered in memory and on disk.
    FASTCONV_TUNE=0 takes the first kept candidate untimed; FASTCONV_TUNE=compile only
    compiles every candidate (warming Triton's cache in parallel processes)."""
    forced = policy.force.get(tiles.name)
    if forced is not None:
        return dict(forced)
    if interpreting() or device.type != "cuda":
        return dict(tiles.interpret)
    key = (f"v{TUNER_SCHEMA}|{tiles.name}|{tiles.digest}|{device_name(device)}"
           f"|triton-{triton.__version__}|{shape_key}")
    if key in _memory:
        return _memory[key]
    with _lock:
        disk = _load_disk()
        if key in disk:
            _memory[key] = disk[key]
            return disk[key]
    candidates = [dict(c) for c in tiles.candidates if prune is None or prune(c)]
    candidates = candidates or [dict(tiles.candidates[0])]
    mode = os.environ.get("FASTCONV_TUNE", "1")
    if mode == "compile":  # nothing timed or remembered
        for cfg in candidates:
            try:
                launch(cfg)
            except Exception:  # noqa: BLE001 - a tile that does not compile is skipped
                pass
        return candidates[0]
    best = candidates[0] if mode == "0" or len(candidates) == 1 else _race(
        tiles.name, key, candidates, launch)
    _memory[key] = best
    with _lock:
        _save(key, best)
    return best


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
    """Every tile the tuner chose (or read from disk) in this process, by full key."""
    return dict(_memory)


def launch_meta(cfg: dict, markers=("KIND", "NCHW")) -> tuple[dict, dict]:
    """Split a tile into kernel constexprs and launch options, less the family's markers
    (keys that pick a kernel or a candidate list, not kernel parameters)."""
    meta = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages", *markers)}
    opts = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    return meta, opts


# --------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Steps:
    """A plan's call as data, for its C++ form (_C.NativePlan, csrc/triton_launch.cpp):
    buffers [(size, channels_last, dtype or the slot whose dtype it takes)], launches
    [(Launch, slots)] and the result slot, over slots (a, b, bias-or-b, buffers...)."""
    buffers: tuple
    launches: tuple
    result: int

    def reference(self, a, b, c=None):
        """What _C.NativePlan does with these steps, in Python (tests compare it with the
        plan's own run)."""
        slots = [a, b, b if c is None else c]
        for size, cl, dtype in self.buffers:
            like = slots[dtype] if isinstance(dtype, int) else a
            slots.append(new_output(size, like, cl, None if isinstance(dtype, int) else dtype))
        for launch, ids in self.launches:
            launch(*[slots[i] for i in ids])
        return slots[self.result]


class Plan:
    """One geometry's prepared call: plan(*tensors) -> output, and every Launch it calls
    (kernels/_common.Launch: arguments fixed, direct launch after the first call).

    `run` is the call in Python. A plan whose call is also given as `steps` runs in C++
    once each of its Launches launches natively (from the second call on): no Python
    between the family's entry and cuLaunchKernel. Where the C++ plan declines (a new
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
        self.native = _C_native_plan(
            [(tuple(size), cl, dtype) for size, cl, dtype in steps.buffers],
            [(launch.native, list(slots)) for launch, slots in steps.launches], steps.result)


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


def _C_native_plan(buffers, launches, result):
    return importlib.import_module("fastconv._C").NativePlan(buffers, launches, result)


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


def _grad_entry(fam, cache: str, planner):
    """A gradient op's entry: (grad_output, weight or input, the other operand's size, ...)."""
    def entry(dy, t, size, stride, padding, dilation, groups):
        plans = getattr(fam, cache)
        key = plan_key(dy, t, None, stride, padding, dilation, groups, tuple(size))
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = planner(dy, t, tuple(size), stride, padding, dilation, groups,
                                        fam.policy)
        return plan(dy, t)
    return entry


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
                plan = plans[key] = forward(x, w, bias, stride, padding, dilation, groups,
                                            activation, fam.policy)
            return plan(x, w, bias)

        self.conv2d = conv2d
        self.conv2d_grad_input = _grad_entry(self, "grad_input_plans", grad_input)
        self.conv2d_grad_weight = _grad_entry(self, "grad_weight_plans", grad_weight)

    def entries(self):
        """(conv2d, conv2d_grad_input, conv2d_grad_weight): what the family module exports."""
        return self.conv2d, self.conv2d_grad_input, self.conv2d_grad_weight

    def _use(self, policy: Policy) -> None:
        # Keyed by identity: a policy's fields may be dicts (unhashable). The state holds
        # the policy, so its id stays unique while the state lives.
        state = self._states.get(id(policy))
        if state is None:
            state = self._states[id(policy)] = (policy, PlanCache(), PlanCache(), PlanCache())
        self.policy, self.fwd_plans, self.grad_input_plans, self.grad_weight_plans = state

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
        for cache in (self.fwd_plans, self.grad_input_plans, self.grad_weight_plans):
            cache.clear()
