"""fastconv's settings: the one public way to choose kernels and switch features.

    import fastconv

    fastconv.settings.tune = "race"              # Triton tiles: time every candidate
    fastconv.settings.cache_dir = "/tmp/fc"      # where tuned tiles are remembered
    with fastconv.use_algorithms("direct", "im2col"):
        y = model(x)                             # algo="auto" picks from these first
    with fastconv.settings.flags(eager_fast_path=False):
        y = model(x)                             # every call through the registered ops

Like ``torch.backends.cudnn``, each setting is an attribute, and ``flags(...)`` sets some
for a ``with`` block and restores them after. The environment variables below are the
layer underneath: they give each setting its starting value in a new process, and setting
the attribute writes the variable, so subprocesses and the Triton kernels (which read it)
see the same value.

====================  =========================  ==============================================
attribute             environment variable       meaning
====================  =========================  ==============================================
tune                  FASTCONV_TUNE              Triton tile choice for a shape with no tile
                                                 tuned on this machine (cache_dir) or shipped
                                                 for this GPU (fastconv/kernels/tiles/):
                                                 "heuristic" (the default; False, "0"): the
                                                 family's rule picks one, nothing timed;
                                                 "race" (True, "1"): time every candidate
                                                 once, remember the fastest in memory and
                                                 on disk; "compile": compile every
                                                 candidate in parallel, time none (warms
                                                 Triton's kernel cache), run the heuristic's.
tune_log              FASTCONV_TUNE_LOG          a file each tuning appends its candidates'
                                                 times to (JSON lines); None: no log.
cache_dir             FASTCONV_CACHE_DIR         directory of the tuned-tile file (default
                                                 ~/.cache/fastconv).
compile_ahead         FASTCONV_COMPILE_AHEAD     a forward's first call with a shape also
                                                 compiles its gradients' Triton kernels in
                                                 background threads (default False:
                                                 unmeasured; benchmarks/first_step.py
                                                 --compile-ahead times it).
first_sight_notice    FASTCONV_FIRST_SIGHT_NOTICE  seconds an op's first call with a new
                                                 shape (plan, compile, tuning) may take
                                                 before the "fastconv" logger says what it
                                                 is doing, at WARNING (default 1.0; None or
                                                 "off": never).
direct_launch         FASTCONV_DIRECT_LAUNCH     after a kernel's first launch, launch the
                                                 compiled kernel from C++ (cuLaunchKernel with
                                                 its parameters laid out once), or else through
                                                 Triton's compiled launcher, skipping the JIT's
                                                 argument binding (default True; "0": off).
cpu_isa               FASTCONV_CPU_ISA           the most capable instruction set fastconv's CPU
                                                 kernels may use: "avx512", "avx2" or
                                                 "portable" (default: the best this CPU has;
                                                 reading it gives the level in use).
eager_fast_path       (none)                     fastconv.conv2d calls the kernels without the
                                                 dispatcher where nothing can tell the
                                                 difference (fastconv/_eager.py; default True).
algorithms            (none)                     preference order for algo="auto": the first
                                                 listed algorithm that applies to a conv runs
                                                 it, else auto's own choice. () = auto's own.
====================  =========================  ==============================================

``FASTCONV_POISON=1`` (fill every output with NaN before a kernel writes it) is a debugging
switch for the test suite, not a setting. Compiled graphs (``torch.compile``) keep the
algorithms chosen when they were traced.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Optional, Union

from . import _eager, registry

_TRUE, _FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")
# kernels/_plan.py's (which imports triton; these must not): the tuner's modes and the
# default first-sight notice threshold.
TUNE_MODES = ("heuristic", "race", "compile")
NOTICE_AFTER_S = 1.0


def _env_bool(name: str, default: bool) -> bool:
    v = os.environ.get(name, "").strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return default


def _set_env(name: str, value: Optional[str]) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class Settings:
    """fastconv.settings (the table is in this class's docstring, set below)."""

    _NAMES = ("tune", "tune_log", "cache_dir", "compile_ahead", "first_sight_notice",
              "direct_launch", "cpu_isa", "eager_fast_path", "algorithms")
    _ENV = ("FASTCONV_TUNE", "FASTCONV_TUNE_LOG", "FASTCONV_CACHE_DIR", "FASTCONV_COMPILE_AHEAD",
            "FASTCONV_FIRST_SIGHT_NOTICE", "FASTCONV_DIRECT_LAUNCH", "FASTCONV_CPU_ISA")

    def __init__(self) -> None:
        self._algorithms: tuple = ()

    # -- Triton tile tuning ------------------------------------------------------------------
    @property
    def tune(self) -> str:
        """One of TUNE_MODES: "heuristic", "race", "compile"."""
        v = os.environ.get("FASTCONV_TUNE", "").strip().lower()
        if v in ("race",) + _TRUE:
            return "race"
        return "compile" if v == "compile" else "heuristic"

    @tune.setter
    def tune(self, value: Union[bool, str]) -> None:
        if isinstance(value, bool):  # the old switch: True raced, False did not
            value = "race" if value else "heuristic"
        if value not in TUNE_MODES:
            raise ValueError(f"fastconv.settings.tune: expected one of {', '.join(TUNE_MODES)} "
                             f"(or True for 'race', False for 'heuristic'), got {value!r}")
        _set_env("FASTCONV_TUNE", value)

    @property
    def tune_log(self) -> Optional[str]:
        return os.environ.get("FASTCONV_TUNE_LOG") or None

    @tune_log.setter
    def tune_log(self, path: Optional[str]) -> None:
        _set_env("FASTCONV_TUNE_LOG", None if path is None else os.fspath(path))

    @property
    def cache_dir(self) -> str:
        return os.environ.get("FASTCONV_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "fastconv")

    @cache_dir.setter
    def cache_dir(self, path: Optional[str]) -> None:
        _set_env("FASTCONV_CACHE_DIR", None if path is None else os.fspath(path))

    @property
    def compile_ahead(self) -> bool:
        return _env_bool("FASTCONV_COMPILE_AHEAD", False)

    @compile_ahead.setter
    def compile_ahead(self, on: bool) -> None:
        _set_env("FASTCONV_COMPILE_AHEAD", "1" if on else "0")

    @property
    def first_sight_notice(self) -> Optional[float]:
        v = os.environ.get("FASTCONV_FIRST_SIGHT_NOTICE", "").strip().lower()
        if v in ("off", "none", "never"):
            return None
        return float(v) if v else NOTICE_AFTER_S

    @first_sight_notice.setter
    def first_sight_notice(self, seconds: Optional[float]) -> None:
        if seconds is not None and not seconds >= 0:
            raise ValueError(f"fastconv.settings.first_sight_notice: seconds >= 0 or None, got "
                             f"{seconds!r}")
        _set_env("FASTCONV_FIRST_SIGHT_NOTICE", "off" if seconds is None else repr(float(seconds)))

    # -- launches ----------------------------------------------------------------------------
    @property
    def direct_launch(self) -> bool:
        return _env_bool("FASTCONV_DIRECT_LAUNCH", True)

    @direct_launch.setter
    def direct_launch(self, on: bool) -> None:
        _set_env("FASTCONV_DIRECT_LAUNCH", "1" if on else "0")
        # The kernels read the variable when fastconv.kernels._common is imported (an
        # environment read per launch would cost more than some launches); once imported,
        # switch its flag too. Importing it here would import triton early: don't.
        common = sys.modules.get("fastconv.kernels._common")
        if common is not None:
            common.DIRECT_LAUNCH = bool(on) and common._direct_launch_supported()
            common.NATIVE_LAUNCH = common._native_launch_class() if common.DIRECT_LAUNCH else None

    # -- CPU kernels -------------------------------------------------------------------------
    @property
    def cpu_isa(self) -> str:
        from . import _C

        return _C.cpu_isa()

    @cpu_isa.setter
    def cpu_isa(self, name: str) -> None:
        from . import _C

        _C.set_max_isa(name)  # ValueError naming the valid levels
        _set_env("FASTCONV_CPU_ISA", name)
        from . import functional

        functional.clear_cache()  # algo="auto" weighs the ISA (fastconv/_heuristics.py)

    @property
    def eager_fast_path(self) -> bool:
        return _eager.ENABLED

    @eager_fast_path.setter
    def eager_fast_path(self, on: bool) -> None:
        _eager.ENABLED = bool(on)

    # -- which algorithm "auto" runs ------------------------------------------------------------
    @property
    def algorithms(self) -> tuple:
        return self._algorithms

    @algorithms.setter
    def algorithms(self, names) -> None:
        names = tuple(names or ())
        for name in names:
            if name == "auto":
                raise ValueError("fastconv.settings.algorithms: list algorithm names; "
                                 "() restores auto's own choice")
            registry.get(name)  # ValueError naming the known algorithms
        self._algorithms = names
        from . import functional

        functional.clear_cache()  # cached plans hold the algorithm "auto" chose

    def choose(self, spec):
        """The algorithm algo="auto" runs for `spec` under these settings."""
        for name in self._algorithms:
            alg = registry.get(name)
            if alg.why_not(spec) is None:
                return alg
        return registry.choose(spec)

    # -- temporary changes ----------------------------------------------------------------------
    @contextlib.contextmanager
    def flags(self, **values):
        """Set some settings for a with-block; restore them (and their variables) after."""
        unknown = set(values) - set(self._NAMES)
        if unknown:
            raise TypeError(f"fastconv.settings.flags: unknown setting(s) {sorted(unknown)}; "
                            f"expected some of {', '.join(self._NAMES)}")
        saved_env = {k: os.environ.get(k) for k in self._ENV}
        saved = {k: getattr(self, k) for k in values}
        try:
            for k, v in values.items():
                setattr(self, k, v)
            yield self
        finally:
            for k, v in saved.items():
                setattr(self, k, v)
            for k, v in saved_env.items():
                _set_env(k, v)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._NAMES}

    def __repr__(self) -> str:
        return "fastconv.settings(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


Settings.__doc__ = __doc__
settings = Settings()


def use_algorithms(*names: str):
    """Context manager: algo="auto" runs the first of `names` that applies to each conv
    (else its own choice), like torch.nn.attention.sdpa_kernel for attention backends."""
    return settings.flags(algorithms=names)
