"""fastconv bench: layer tables, FLOP/byte formulas, baselines, the timing harness, and the
command end to end (CPU, in-process). No timing thresholds: timing is tested on its statistics."""
import csv
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import fastconv
from fastconv import registry
from fastconv.bench import baselines, report, tables, timing
from fastconv.spec import ConvSpec

ALL_LAYERS = [pytest.param(layer, id=f"{layer.suite}-{layer.label}")
              for suite in tables.SUITES for layer in tables.load(suite)]


def _meta(spec: ConvSpec):
    x = torch.empty(spec.input_shape, device="meta")
    w = torch.empty(spec.weight_shape, device="meta")
    return x, w


def _sym(spec):
    t, b, l, r = spec.padding
    assert t == b and l == r
    return (t, l)


# -- tables -------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite", tables.SUITES)
def test_table_loads_and_names_its_source(suite):
    layers = tables.load(suite)
    assert layers, suite
    src = tables.source(suite)
    assert "Source:" in src
    names = [(l.name, l.spec.N) for l in layers]
    assert len(names) == len(set(names)), "duplicate layer rows"
    assert any(l.quick for l in layers), "every suite needs a --quick representative"


@pytest.mark.parametrize("layer", ALL_LAYERS)
def test_table_layer_is_a_valid_conv(layer):
    s = layer.spec
    x, w = _meta(s)
    _, _, spec = fastconv.conv_spec(x, w, None, s.stride, _sym(s), s.dilation, s.groups)
    assert spec == s.with_(device="meta")
    assert s.Ho >= 1 and s.Wo >= 1 and layer.count >= 1
    # At least one public CPU algorithm runs every table layer.
    assert registry.applicable(s)


def test_tables_cover_the_brief():
    r50 = tables.load("resnet50")
    assert sum(l.count for l in r50) == 53  # every conv of ResNet-50
    assert {(l.spec.R, l.spec.stride[0]) for l in r50} >= {(7, 2), (3, 1), (3, 2), (1, 1), (1, 2)}
    mb = tables.load("mobilenetv2")
    assert sum(l.count for l in mb) == 52
    dw = [l.spec for l in mb if l.spec.is_depthwise]
    assert {s.stride[0] for s in dw} == {1, 2} and all(s.R == 3 for s in dw)
    assert sum(l.count for l in mb if l.spec.is_depthwise) == 17
    cn = tables.load("convnext_t")
    assert {(l.spec.C, l.spec.H) for l in cn if l.spec.is_depthwise and l.spec.R == 7} == \
        {(96, 56), (192, 28), (384, 14), (768, 7)}
    assert any(l.spec.R == 4 and l.spec.stride == (4, 4) for l in cn)
    rep = tables.load("replknet")
    assert [(l.spec.R, l.spec.C, l.spec.H) for l in rep] == \
        [(31, 128, 56), (29, 256, 28), (27, 512, 14), (13, 1024, 7)]
    assert all(l.spec.is_depthwise and l.spec.Ho == l.spec.H for l in rep)
    rx = tables.load("resnext")
    assert all(l.spec.groups == 32 and l.spec.R == 3 for l in rx)
    cvl = tables.load("conv_vs_linear")
    assert {l.spec.N for l in cvl} == {1, 64}
    assert {(l.spec.C, l.spec.K, l.spec.R, l.spec.H) for l in cvl} == \
        {(1024, 512, 1, 1), (3, 64, 3, 32), (3, 64, 7, 32)}


def test_batch_override_and_dedup():
    cvl = tables.load("conv_vs_linear", batch=1)
    assert {l.spec.N for l in cvl} == {1} and len(cvl) == 3
    r50 = tables.load("resnet50", default_batch=8, dtype=torch.float64, layout="nhwc")
    assert all(l.spec.N == 8 and l.spec.dtype == torch.float64 and l.spec.layout == "nhwc" for l in r50)
    with pytest.raises(ValueError, match="unknown suite"):
        tables.load("vgg16")
    assert tables.expand(["resnet50", "all"])[0] == "resnet50"
    assert set(tables.expand(["all"])) == set(tables.SUITES)


# -- FLOP and byte formulas ----------------------------------------------------------------------
@pytest.mark.parametrize("layer", ALL_LAYERS)
def test_flops_bytes_gemm_shape(layer):
    s = layer.spec
    x, w = _meta(s)
    with FlopCounterMode(display=False) as fc:
        out = F.conv2d(x, w, None, s.stride, _sym(s), s.dilation, s.groups)
    assert s.flops == fc.get_total_flops()
    e = s.element_size
    assert s.min_bytes == (x.numel() + w.numel() + out.numel()) * e
    assert tuple(out.shape) == s.output_shape
    cols = F.unfold(x, (s.R, s.S), dilation=s.dilation, padding=_sym(s), stride=s.stride)
    m, n, k = s.gemm_shape
    assert (m, n * s.groups, k * s.groups) == (cols.shape[0] * cols.shape[2], s.K, cols.shape[1])
    assert 2 * m * n * k * s.groups == s.flops


# -- baselines -----------------------------------------------------------------------------------
BASELINE_SPECS = [
    ConvSpec(2, 6, 9, 8, 4, 3, 3, stride=(2, 1), padding=(1, 1, 1, 1), dilation=(1, 2), groups=2),
    ConvSpec(1, 4, 7, 7, 8, 3, 2, padding=(0, 1, 1, 0), dtype=torch.float64),
    ConvSpec(2, 5, 6, 6, 5, 3, 3, padding=(1, 1, 1, 1), groups=5, layout="nhwc"),
    ConvSpec(3, 16, 1, 1, 8, 1, 1),
]


@pytest.mark.parametrize("spec", BASELINE_SPECS, ids=lambda s: s.describe())
def test_baselines_compute_the_conv(spec):
    xs, w = baselines.make_inputs(spec, n=2)
    mf = torch.channels_last if spec.layout == "nhwc" else torch.contiguous_format
    assert all(x.is_contiguous(memory_format=mf) for x in xs) and w.is_contiguous(memory_format=mf)
    assert not torch.equal(xs[0], xs[1]) and xs[0].abs().min() >= 0 and xs[0].abs().max() > 0
    t, b, l, r = spec.padding
    ref = F.conv2d(F.pad(xs[0].double(), (l, r, t, b)), w.double(), None, spec.stride, 0,
                   spec.dilation, spec.groups)
    tol = dict(rtol=1e-4, atol=1e-4) if spec.dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(baselines.torch_conv_fn(spec)(xs[0], w).double(), ref, **tol)
    torch.testing.assert_close(baselines.unfold_fn(spec)(xs[0], w).double(), ref, **tol)
    for alg in registry.applicable(spec):
        torch.testing.assert_close(baselines.fastconv_fn(alg, spec)(xs[0], w).double(), ref, **tol)
    # The equivalent GEMM has the conv's FLOPs, and Linear computes the same product as mm.
    a_pool, bmat = baselines.gemm_operands(spec, n=1)
    name, gemm = baselines.gemm_fn(spec)
    prod = gemm(a_pool[0], bmat)
    assert 2 * prod.numel() * a_pool[0].shape[-1] == spec.flops
    assert name == ("mm" if spec.groups == 1 else "bmm")
    if spec.groups == 1:
        torch.testing.assert_close(baselines.linear_fn(spec)(a_pool[0], bmat.t().contiguous()), prod)


def test_backward_candidate_returns_both_grads():
    spec = BASELINE_SPECS[0]
    xs, w = baselines.make_inputs(spec, n=2)
    c = baselines.candidate(baselines.torch_conv_fn(spec), xs, w, backward=True)
    gx, gw = c()
    assert gx.shape == xs[0].shape and gw.shape == w.shape
    assert c.pool[0][1].grad is None  # gradients returned, not accumulated


def test_torch_backend_is_named():
    """ATen's own choice: oneDNN for float32 unless the conv is tiny (batch 1, 3x3, <= 20480 input
    elements go to slow_conv2d); float64 always slow_conv2d."""
    big = ConvSpec(1, 16, 64, 64, 16, 3, 3, padding=(1, 1, 1, 1))
    small = big.with_(H=8, W=8)
    names = {}
    for spec in (big, small, big.with_(dtype=torch.float64)):
        xs, w = baselines.make_inputs(spec, n=1)
        names[spec] = baselines.torch_backend(spec, xs[0], w)
    if torch.backends.mkldnn.is_available():
        assert names[big].startswith("mkldnn")
    assert names[small].startswith("slow_conv2d")
    assert names[big.with_(dtype=torch.float64)].startswith("slow_conv2d")


# -- timing harness ------------------------------------------------------------------------------
def test_rotating_cycles_inputs():
    seen = []
    r = timing.Rotating(lambda a: seen.append(a), [(1,), (2,), (3,)])
    for _ in range(7):
        r()
    assert seen == [1, 2, 3, 1, 2, 3, 1]


class FakeClock:
    """A deterministic workload: each call advances a fake clock by exactly `cost` seconds, except
    the first `slow_calls` (first-call costs: allocation, compilation) which take 100x longer."""

    def __init__(self, cost=1e-3, slow_calls=0):
        self.now, self.cost, self.slow = 0.0, cost, slow_calls

    def timer(self):
        return self.now

    def work(self):
        self.now += self.cost * (100 if self.slow > 0 else 1)
        self.slow -= 1


def test_harness_reports_per_call_median_after_warmup():
    clock = FakeClock(cost=1e-3, slow_calls=2)
    t = timing.measure(clock.work, "cpu", repeats=5, timer=clock.timer)
    assert t.median_ms == pytest.approx(1.0) and t.min_ms == pytest.approx(1.0)
    assert t.max_ms == pytest.approx(1.0) and t.n >= 5
    assert t.contains(t.median_ms)


def test_harness_honours_repeats_for_slow_calls():
    clock = FakeClock(cost=0.5)  # 500 ms a call: blocked_autorange alone would give one block
    t = timing.measure(clock.work, "cpu", repeats=4, min_run_time=0.2, timer=clock.timer)
    assert t.n >= 4 and t.median_ms == pytest.approx(500.0)


def test_harness_is_stable_on_a_deterministic_workload():
    """The median of the same measurement, repeated in one run, stays within the spread.

    CI shares 2 cores with other jobs, whose load can change between two 0.2 s measurements; a
    systematic harness defect (warm-up or first-call cost timed, per-block vs per-call mix-up,
    blocks dropped) fails every attempt, a load change only one, so 3 attempts are allowed."""
    a, b = torch.randn(96, 96), torch.randn(96, 96)
    work = lambda: torch.mm(a, b)  # noqa: E731  (fixed work: same shapes, same data)
    attempts = []
    for _ in range(3):
        m1 = timing.measure(work, "cpu", repeats=10, min_run_time=0.2, threads=1)
        m2 = timing.measure(work, "cpu", repeats=10, min_run_time=0.2, threads=1)
        for m in (m1, m2):
            assert m.min_ms <= m.q25_ms <= m.median_ms <= m.q75_ms <= m.max_ms and m.n >= 10
        attempts.append((m1, m2))
        if m1.contains(m2.median_ms) or m2.contains(m1.median_ms):
            return
    pytest.fail(f"medians outside each other's spread in every attempt: {attempts}")


def test_timing_from_samples():
    t = timing.Timing.from_samples([4.0, 1.0, 3.0, 2.0, 100.0])
    assert (t.median_ms, t.min_ms, t.max_ms, t.n) == (3.0, 1.0, 100.0, 5)
    assert t.q25_ms == 2.0 and t.q75_ms == 4.0
    with pytest.raises(ValueError):
        timing.Timing.from_samples([])
    with pytest.raises(ValueError):
        timing.measure(lambda: None, "cpu", repeats=0)


@pytest.mark.gpu
def test_harness_is_stable_on_gpu():
    a, b = torch.randn(2048, 2048, device="cuda"), torch.randn(2048, 2048, device="cuda")
    m1 = timing.measure(lambda: torch.mm(a, b), "cuda", repeats=20)
    m2 = timing.measure(lambda: torch.mm(a, b), "cuda", repeats=20)
    assert m1.n >= 20 and (m1.contains(m2.median_ms) or m2.contains(m1.median_ms))


# -- the command end to end ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from fastconv.cli import main

    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    rc = main(["bench", "--device", "cpu", "--quick", "--suite", "conv_vs_linear", "--batch", "1",
               "--repeats", "2", "--threads", "1", "--copy-mib", "16", "--out", str(out)])
    assert torch.get_num_threads() == threads  # the run's --threads doesn't leak into the caller
    return rc, out


def test_quick_run_writes_every_output(quick_run):
    rc, out = quick_run
    assert rc == 0
    for name in ("results.csv", "results.json", "summary.md", "speedup.png", "roofline.png",
                 "conv_vs_linear.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("speedup.png", "roofline.png", "conv_vs_linear.png"):
        import matplotlib.image

        img = matplotlib.image.imread(str(out / name))
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0.01, name
    summary = (out / "summary.md").read_text()
    assert "geomean" in summary.lower() and "TF32" in summary and "ceilings" in summary


def test_quick_run_csv_schema(quick_run):
    _, out = quick_run
    text = (out / "results.csv").read_text()
    assert text.startswith("suite,layer,") and "#" not in text.splitlines()[0]
    rows = report.read_csv(str(out / "results.csv"))
    assert tuple(rows[0].keys()) == tuple(report.CSV_COLUMNS)
    required = ["suite", "layer", "N", "C", "H", "W", "K", "R", "S", "stride", "padding", "dilation",
                "groups", "device", "dtype", "layout", "algo", "time_ms", "torch_ms", "torch_backend",
                "gemm_ms", "speedup", "gflops", "gbps", "unfold_ms", "linear_ms"]
    assert set(required) <= set(report.CSV_COLUMNS)
    specs = {(l.name, l.spec.N) for l in tables.load("conv_vs_linear", batch=1, quick=True)}
    assert {(r["layer"], int(r["N"])) for r in rows} == specs
    for r in rows:
        spec = ConvSpec(int(r["N"]), int(r["C"]), int(r["H"]), int(r["W"]), int(r["K"]), int(r["R"]),
                        int(r["S"]), groups=int(r["groups"]))
        assert r["device"] == "cpu" and r["dtype"] == "float32" and r["ok"] == "True"
        assert r["algo"] in {a.name for a in registry.applicable(spec)}
        t, tq25, tq75 = float(r["time_ms"]), float(r["time_q25_ms"]), float(r["time_q75_ms"])
        assert 0 < tq25 <= t <= tq75 and float(r["torch_ms"]) > 0
        assert float(r["speedup"]) == pytest.approx(float(r["torch_ms"]) / t, rel=1e-4)
        assert float(r["gflops"]) == pytest.approx(int(r["flops"]) / t / 1e6, rel=1e-4)
        assert float(r["gemm_ms"]) > 0 and float(r["unfold_ms"]) > 0 and float(r["linear_ms"]) > 0
    # Every applicable public algorithm is in the run by default (none only interpreted).
    from fastconv.bench.runner import default_algorithms

    for layer in tables.load("conv_vs_linear", batch=1, quick=True):
        got = {r["algo"] for r in rows if r["layer"] == layer.name}
        want = {a.name for a in registry.applicable(layer.spec) if "cpu" in a.devices}
        assert got == want == {a.name for a in default_algorithms(layer.spec)} and want


def test_results_are_plain_tables_with_the_run_metadata(quick_run):
    """results.csv: one header line, then rows (csv.DictReader); results.json: a list of
    records with the same columns. The run's metadata is in columns on every row."""
    import csv

    _, out = quick_run
    with open(out / "results.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == list(report.CSV_COLUMNS) and len(lines) > 1
    assert all(len(line) == len(lines[0]) for line in lines)
    rows = [dict(zip(lines[0], line)) for line in lines[1:]]
    records = json.loads((out / "results.json").read_text())
    assert isinstance(records, list) and len(records) == len(rows)
    for r, j in zip(rows, records):
        assert list(j) == list(report.CSV_COLUMNS)
        assert r["torch_version"] == j["torch_version"] == torch.__version__
        assert r["fastconv_version"] == fastconv.__version__ and r["device_name"] == j["device_name"] != ""
        assert r["date_utc"] == j["date_utc"] and len(r["date_utc"]) == 19
        assert int(r["threads"]) == j["threads"] == 1 and r["layer"] == j["layer"]
        assert float(r["time_ms"]) == pytest.approx(j["time_ms"], rel=1e-5)
        assert r["warning"] == (j["warning"] or "") and r["oversubscribed"] in ("True", "False")


def test_results_load_with_pandas(quick_run):
    pd = pytest.importorskip("pandas")
    _, out = quick_run
    df_csv = pd.read_csv(out / "results.csv")
    df_json = pd.read_json(out / "results.json")
    assert list(df_csv.columns) == list(df_json.columns) == list(report.CSV_COLUMNS)
    assert len(df_csv) == len(df_json) == len(report.read_csv(str(out / "results.csv"))) > 0
    assert (df_csv["torch_version"] == torch.__version__).all()
    assert (df_json["device_name"] == df_csv["device_name"]).all()
    assert df_csv["time_ms"].dtype.kind == "f" and (df_csv["time_ms"] > 0).all()
    assert (df_csv["time_ms"] - df_json["time_ms"]).abs().max() <= 1e-5 * df_csv["time_ms"].max()


def test_quick_run_json_header(quick_run):
    _, out = quick_run
    doc = json.loads((out / "run.json").read_text())
    h = doc["header"]
    for key in ("torch", "triton", "onednn", "mkldnn_available", "cudnn", "device_name", "threads", "tf32"):
        assert key in h
    assert h["threads"] == 1
    assert h["ceilings"]["copy_gbps"] > 0 and h["ceilings"]["matmul_gflops"] > 0
    assert "conv_vs_linear" in doc["sources"] and h["pass"] == "fwd"
    st = h["stability"]  # recorded, not asserted: a real run on a shared machine may be noisy
    assert st["first_min_ms"] <= st["first_ms"] <= st["first_max_ms"] and st["again_ms"] > 0


def test_replot_from_json(quick_run):
    from fastconv.cli import main

    _, out = quick_run
    before = (out / "summary.md").read_text()
    (out / "speedup.png").unlink()
    assert main(["bench", "--replot", str(out)]) == 0
    assert (out / "speedup.png").stat().st_size > 0
    assert (out / "summary.md").read_text() == before


def test_cli_rejects_bad_arguments(tmp_path):
    from fastconv.cli import main

    with pytest.raises(SystemExit, match="unknown algo 'winograd9000'"):
        main(["bench", "--device", "cpu", "--algo", "winograd9000", "--out", str(tmp_path)])
    # --out naming an existing file: a one-line error before any timing, no traceback.
    f = tmp_path / "taken"
    f.write_text("x")
    with pytest.raises(SystemExit, match="is an existing file"):
        main(["bench", "--device", "cpu", "--suite", "conv_vs_linear", "--out", str(f)])
    with pytest.raises(SystemExit, match="is an existing file"):
        main(["explain", "--input", "1,4,6,6", "--weight", "4,4,3,3", "--out", str(f)])
    assert f.read_text() == "x"
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cpu", "--suite", "vgg16", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not supported on cpu"):
        main(["bench", "--device", "cpu", "--dtype", "float16", "--out", str(tmp_path)])


def test_named_internal_algorithm_and_skips(tmp_path):
    """--algo takes any registered name (the internal reference too); one that doesn't apply to a
    layer is skipped with its reason, not an error."""
    from fastconv.bench.runner import Options, run

    res = run(Options(device="cpu", suites=["mobilenetv2"], quick=True, algos=["reference", "depthwise"],
                      repeats=1, threads=1, progress=False, measure_ceilings=False))
    algos = {(r["layer"], r["algo"]) for r in res.rows}
    assert ("b8_expand_64to384", "reference") in algos and ("b8_expand_64to384", "depthwise") not in algos
    assert ("b3_dw3x3_144", "depthwise") in algos
    assert any(s[1] == "b8_expand_64to384" and s[2] == "depthwise" and "groups" in s[3] for s in res.skipped)
    assert all(r["ok"] for r in res.rows)


@pytest.mark.gpu
def test_quick_run_on_gpu(tmp_path):
    from fastconv.cli import main

    rc = main(["bench", "--device", "cuda", "--quick", "--suite", "conv_vs_linear", "resnext",
               "--repeats", "3", "--backward", "--out", str(tmp_path)])
    assert rc == 0
    rows = report.read_csv(str(tmp_path / "results.csv"))
    assert rows and all(r["device"] == "cuda" and float(r["torch_ms"]) > 0 for r in rows)
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd"}
    assert any(r["torch_backend"].startswith("cudnn") for r in rows)
    header = json.loads((tmp_path / "run.json").read_text())["header"]
    assert header["device_name"] and header["cudnn"] and header["tf32"]["cudnn.benchmark"] is True


def test_backward_rows():
    """--backward adds a fwd+bwd row per layer and algorithm, counting 3x the forward's FLOPs."""
    from fastconv.bench.runner import Options, run

    res = run(Options(device="cpu", suites=["conv_vs_linear"], batch=1, quick=True, algos=["im2col"],
                      backward=True, repeats=1, threads=1, progress=False, measure_ceilings=False))
    fwd = {r["layer"]: r for r in res.rows if r["pass"] == "fwd"}
    bwd = {r["layer"]: r for r in res.rows if r["pass"] == "fwd+bwd"}
    assert fwd.keys() == bwd.keys() and len(fwd) == 3
    for name, r in bwd.items():
        assert r["flops"] == 3 * fwd[name]["flops"] and r["time_ms"] > 0 and r["gemm_ms"] > 0
        assert r["unfold_ms"] > 0 and r["linear_ms"] > 0


def test_interpreted_algorithms_not_timed_by_default(monkeypatch):
    from fastconv.bench.runner import default_algorithms

    fake = registry.Algorithm(name="_bench_test_interpreted", op="reference", devices=("cuda",),
                              dtypes=(torch.float32,), summary="test", constraints="any",
                              interpreted_devices=("cpu",))
    registry.register(fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    try:
        spec = ConvSpec(1, 8, 8, 8, 8, 3, 3)
        assert fake in registry.applicable(spec) and fake not in default_algorithms(spec)
        assert default_algorithms(spec)
    finally:
        registry.unregister(fake.name)


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastconv", "bench", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--suite" in out.stdout and "--backward" in out.stdout


# -- oversubscription: the checks on injected measurements (no timing in these tests) -------------
from fastconv.bench import health  # noqa: E402


def test_default_threads_follow_the_load():
    assert health.default_threads(2, 0.1, 2) == 2  # idle machine: torch's default
    assert health.default_threads(2, 1.0, 2) == 1  # one busy process: one CPU left
    assert health.default_threads(2, 3.2, 2) == 1  # the issue's load: never below 1
    assert health.default_threads(16, 4.0, 16) == 12
    assert health.default_threads(8, None, 8) == 8  # no load average on this OS


def test_checks_flag_the_issues_numbers():
    # 2 cores, load 3.2, oneDNN at 2 threads 28.8 ms vs 0.296 ms on one thread.
    assert "oversubscribed" in health.load_warning(3.2, 2, 2)
    assert health.load_warning(0.2, 2, 2) is None and health.load_warning(3.2, 2, 1) is None
    w = health.collapse_warning(2, 28.8, 0.296)
    assert w.startswith("oversubscribed") and "97.3x" in w
    assert health.collapse_warning(2, 0.2, 0.296) is None  # two threads faster: fine
    assert health.collapse_warning(1, 28.8, 0.296) is None  # one thread can't collapse
    assert health.collapse_warning(2, 28.8, math.nan) is None
    assert health.spread_warning(1.0, 3.5, "im2col").startswith("noisy")
    assert health.spread_warning(1.0, 1.2, "im2col") is None
    row = {"algo": "im2col", "torch_ms": 28.8, "torch_1t_ms": 0.296, "torch_min_ms": 27.0,
           "torch_max_ms": 30.0, "time_min_ms": 0.4, "time_max_ms": 0.5}
    reasons = health.row_warnings(row, 2)
    assert len(reasons) == 1 and health.is_oversubscribed(reasons)


def _fake_time(one_thread_ms, many_thread_ms, spread=1.0):
    """Runner.time replaced: every candidate takes `many_thread_ms` at the run's thread count,
    PyTorch's one-thread calibration `one_thread_ms`; samples span `spread`x."""
    calls = []

    def time(self, fn, warmup=1, threads=None):
        ms = one_thread_ms if threads == 1 else many_thread_ms
        calls.append(threads)
        return timing.Timing(ms, ms, ms, ms, ms * spread, 5)

    return time, calls


def test_collapsed_threads_are_remeasured_and_flagged_everywhere(monkeypatch, tmp_path):
    from fastconv.bench import plots
    from fastconv.bench.runner import Options, Result, Runner, run

    fake, calls = _fake_time(0.296, 28.8)
    monkeypatch.setattr(Runner, "time", fake)
    monkeypatch.setattr(health, "loadavg", lambda: 0.1)  # this machine's real load stays out
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    res = run(Options(device="cpu", suites=["resnext"], quick=True, algos=["direct"], threads=2,
                      repeats=1, progress=False, measure_ceilings=False))
    assert res.rows and all(r["oversubscribed"] and "28.8 ms on 2 threads" in r["warning"]
                            for r in res.rows)
    assert all(r["measured"] == 1 + health.RETRIES for r in res.rows)  # measured again first
    assert calls.count(1) == len(res.rows) * (1 + health.RETRIES)  # one calibration per measurement
    # Console/summary, CSV/JSON columns and the plots all carry it.
    lines = report.warning_lines(res)
    assert lines[0].startswith(health.BANNER) and "oversubscribed" in lines[0]
    report.write_summary(res, str(tmp_path / "summary.md"))
    assert f"WARNING — {health.BANNER}" in (tmp_path / "summary.md").read_text()
    report.write_csv(res.rows, str(tmp_path / "results.csv"), res.header)
    assert all(r["oversubscribed"] == "True" for r in report.read_csv(str(tmp_path / "results.csv")))
    drawn = []
    monkeypatch.setattr(plots, "_banner", lambda fig, h, rows: drawn.append(health.run_warnings(h, rows)) or 0.9)
    plots.write_all(res.rows, res.header, str(tmp_path))
    assert len(drawn) == 2 and all(d for d in drawn)
    # A sound run: no warning anywhere.
    fake_ok, _ = _fake_time(0.296, 0.2)
    monkeypatch.setattr(Runner, "time", fake_ok)
    ok = run(Options(device="cpu", suites=["resnext"], quick=True, algos=["direct"], threads=2,
                     repeats=1, progress=False, measure_ceilings=False))
    assert not any(r["warning"] for r in ok.rows) and report.warning_lines(ok) == []
    assert all(r["measured"] == 1 for r in ok.rows)
    assert isinstance(ok, Result)


def test_noisy_rows_are_flagged_not_oversubscribed(monkeypatch):
    from fastconv.bench.runner import Options, Runner, run

    fake, _ = _fake_time(0.3, 0.3, spread=10.0)
    monkeypatch.setattr(Runner, "time", fake)
    res = run(Options(device="cpu", suites=["resnext"], quick=True, algos=["direct"], threads=1,
                      repeats=1, progress=False, measure_ceilings=False))
    assert all(r["warning"].startswith("noisy") and not r["oversubscribed"] for r in res.rows)


def test_default_thread_count_comes_from_the_load(monkeypatch):
    from fastconv.bench.runner import Options, Runner

    monkeypatch.setattr(health, "loadavg", lambda: 3.2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    r = Runner(Options(device="cpu"))
    assert r.threads == 1 and "load average 3.2" in r.threads_from
    assert Runner(Options(device="cpu", threads=2)).threads == 2


# -- the command's remaining options ------------------------------------------------------------------
def test_algo_auto_and_labels(monkeypatch, tmp_path):
    """--algo auto runs what algo='auto' picks per layer; --backward's pass label; the
    conv_vs_linear plot only when that suite ran; --quick sums labelled as a subset."""
    from fastconv.bench.runner import Options, Runner, run
    from fastconv.bench import plots

    fake, _ = _fake_time(0.3, 0.3)
    monkeypatch.setattr(Runner, "time", fake)
    res = run(Options(device="cpu", suites=["mobilenetv2"], quick=True, algos=["auto"], backward=True,
                      threads=1, repeats=1, progress=False, measure_ceilings=False))
    picked = {(r["layer"], r["algo"]) for r in res.rows if r["pass"] == "fwd"}
    for layer in tables.load("mobilenetv2", quick=True):
        assert (layer.name, fastconv.select(layer.spec).name) in picked
    assert res.header["pass"] == "fwd, fwd+bwd" and {r["pass"] for r in res.rows} == {"fwd", "fwd+bwd"}
    assert plots.write_all(res.rows, res.header, str(tmp_path)) == ["speedup.png", "roofline.png"]
    assert not (tmp_path / "conv_vs_linear.png").exists()
    summary = report.summary_table(res.rows)
    n = len(tables.rows("mobilenetv2"))
    assert summary and all(not s["complete"] and s["table_layers"] == n for s in summary)
    assert all(s["network_ms"] != s["network_ms"] and s["timed_ms"] > 0 for s in summary)
    text = report.terminal_summary(res.rows)
    assert f"of {n}" in text and "not the whole network" in text
    report.write_summary(res, str(tmp_path / "summary.md"))
    assert f" of {n} |" in (tmp_path / "summary.md").read_text()


def test_full_table_is_the_network(monkeypatch):
    from fastconv.bench.runner import Options, Runner, run

    fake, _ = _fake_time(0.5, 0.5)
    monkeypatch.setattr(Runner, "time", fake)
    res = run(Options(device="cpu", suites=["conv_vs_linear"], batch=1, algos=["im2col"], threads=1,
                      repeats=1, progress=False, measure_ceilings=False))
    (s,) = report.summary_table(res.rows)
    counts = sum(layer.count for layer in tables.load("conv_vs_linear", batch=1))
    assert s["complete"] and s["network_ms"] == pytest.approx(0.5 * counts)


def test_cli_accepts_algo_auto(tmp_path, monkeypatch):
    from fastconv.bench import cli as bench_cli

    args = bench_cli.add_parser(__import__("argparse").ArgumentParser().add_subparsers()).parse_args(
        ["--device", "cpu", "--algo", "auto", "im2col", "--out", str(tmp_path)])
    opts = bench_cli.options_from_args(args)
    assert list(opts.algos) == ["auto", "im2col"]


def test_first_step_dry_run(tmp_path):
    """benchmarks/first_step.py on the CPU: each side in its own process with fresh caches,
    the Triton kernels interpreted; rows for both sides and the markdown table."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "first_step.py"),
                          "--dry-run", "--models", "tiny_resnet", "--precisions", "tf32",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / "first_step.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["side"], r["status"]) for r in rows] == [("torch", "ok"), ("fastconv", "ok")]
    fast = rows[1]
    assert float(fast["first_s"]) > 0 and int(fast["plans"]) > 0 and fast["extra_first_s"]
    assert "| tiny_resnet | tf32 |" in (tmp_path / "first_step.md").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_pages_stops_page_faults_on_repeated_large_outputs():
    """A conv with a 13 MB output, called again and again: with glibc's defaults every call's
    output is a fresh mmap (a page fault per 4 KiB page); once keep_freed_pages has run, the
    calls reuse resident pages (what the CPU bench times)."""
    code = textwrap.dedent("""
        import resource, sys, torch, torch.nn.functional as F
        from fastconv.bench import machine
        if sys.argv[1] == "keep":
            print(machine.keep_freed_pages(), file=sys.stderr)
        x, w = torch.randn(8, 32, 112, 112), torch.randn(32, 1, 3, 3)
        for _ in range(3):  # warm-up: oneDNN's primitive, the heap's first growth
            F.conv2d(x, w, None, 1, 1, 1, 32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            F.conv2d(x, w, None, 1, 1, 1, 32)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    counts = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        counts[mode] = int(out.stdout.split()[-1])
    pages = 5 * (8 * 32 * 112 * 112 * 4) // 4096
    assert counts["default"] > pages // 2, counts
    assert counts["keep"] < pages // 20, counts
