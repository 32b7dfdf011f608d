"""The cache simulator (csrc/cachesim.cpp) on hand-computable address streams,
and its conv loop nests on layers small enough to count by hand."""
import pytest

from fastconv import _C
from fastconv.explain.machine import CacheLevel, cache_levels
from fastconv.explain.simulate import geometry, record, simulate
from fastconv.spec import ConvSpec

L1 = (32 << 10, 8, 64)  # 64 sets
L2 = (256 << 10, 8, 64)


def replay(addrs, sizes=4, writes=False, levels=(L1,), hist=False):
    n = len(addrs)
    sizes = [sizes] * n if isinstance(sizes, int) else sizes
    writes = [writes] * n if isinstance(writes, bool) else writes
    return _C.cachesim_replay(list(addrs), sizes, writes, [tuple(x) for x in levels], hist)


@pytest.mark.parametrize("levels", [(L1,), (L1, L2)])
@pytest.mark.parametrize("elem", [4, 8])
def test_streaming_read_misses_once_per_line(levels, elem):
    nbytes = 1 << 20  # 4x L2: nothing is reused
    r = replay(range(0, nbytes, elem), sizes=elem, levels=levels)
    lines = nbytes // 64
    l1 = r["levels"][0]
    assert l1["accesses"] == nbytes // elem
    assert l1["misses"] == lines
    assert l1["hits"] == nbytes // elem - lines
    assert r["l1_bytes"] == nbytes
    if len(levels) == 2:
        assert r["levels"][1]["accesses"] == lines and r["levels"][1]["misses"] == lines


@pytest.mark.parametrize("size_kib", [4, 16, 32])
def test_loop_that_fits_in_l1_misses_only_cold(size_kib):
    reps, nbytes = 10, size_kib << 10
    addrs = [a for _ in range(reps) for a in range(0, nbytes, 64)]
    r = replay(addrs, sizes=64)
    lines = nbytes // 64
    assert r["levels"][0]["misses"] == lines
    assert r["levels"][0]["hits"] == (reps - 1) * lines


def test_loop_one_line_larger_than_l1_always_misses():
    # LRU's worst case: a cyclic sweep over capacity + 1 line per set.
    nbytes = (32 << 10) + 64 * 64
    addrs = [a for _ in range(5) for a in range(0, nbytes, 64)]
    r = replay(addrs, sizes=64)
    assert r["levels"][0]["hits"] == 0


@pytest.mark.parametrize("ways,n_addr,expect_hits", [(8, 8, 9 * 8), (8, 9, 0), (4, 4, 9 * 4), (4, 5, 0)])
def test_stride_that_maps_to_one_set_thrashes(ways, n_addr, expect_hits):
    size = 64 * 64 * ways  # 64 sets
    stride = 64 * 64  # every address in set 0
    addrs = [i * stride for _ in range(10) for i in range(n_addr)]
    r = replay(addrs, sizes=4, levels=[(size, ways, 64)])
    assert r["levels"][0]["hits"] == expect_hits
    assert r["levels"][0]["misses"] == 10 * n_addr - expect_hits


def test_non_power_of_two_sets():
    # 3 sets x 2 ways: lines 0, 3, 6 share set 0, so a cycle over them thrashes.
    lv = [(3 * 2 * 64, 2, 64)]
    r = replay([0, 3 * 64, 6 * 64] * 4, levels=lv)
    assert r["levels"][0]["hits"] == 0
    r = replay([0, 1 * 64, 2 * 64] * 4, levels=lv)  # one line per set: all fit
    assert r["levels"][0]["misses"] == 3


def test_straddling_access_touches_two_lines():
    r = replay([60], sizes=8)
    assert r["accesses"] == 1 and r["levels"][0]["accesses"] == 2 and r["levels"][0]["misses"] == 2


def test_dirty_lines_are_written_back_once():
    nbytes = 4 * (32 << 10)
    r = replay(range(0, nbytes, 64), sizes=64, writes=True)
    # Every line is dirty; all but the last 512 (the cache's capacity) are evicted.
    assert r["levels"][0]["writebacks"] == nbytes // 64 - (32 << 10) // 64


def test_reuse_distance_histogram():
    # A B C A: the second A has 2 distinct lines in between -> bucket 2 ([2, 4)).
    r = replay([0, 64, 128, 0, 0], sizes=4, hist=True)
    assert r["reuse_cold"] == 3
    assert r["reuse_hist"] == [1, 0, 1]  # A A again: distance 0 -> bucket 0


def test_reuse_distance_predicts_fully_associative_lru():
    # Misses of a fully associative LRU cache of C lines = accesses at distance >= C.
    import random

    rnd = random.Random(0)
    addrs = [64 * rnd.randrange(300) for _ in range(20000)]
    lines = 128
    r = replay(addrs, levels=[(lines * 64, lines, 64)], hist=True)
    far = r["reuse_cold"] + sum(n for b, n in enumerate(r["reuse_hist"]) if b >= 8)  # 2^7 = 128 lines
    assert r["levels"][0]["misses"] == far


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of ways"):
        replay([0], levels=[(1000, 8, 64)])
    with pytest.raises(ValueError, match="same line size"):
        replay([0], levels=[(32 << 10, 8, 64), (256 << 10, 8, 128)])
    spec = ConvSpec(1, 4, 8, 8, 8, 3, 3)
    with pytest.raises(ValueError, match="unknown algorithm"):
        _C.cachesim_simulate("winograd", geometry(spec), {}, [L1], 0, False)
    with pytest.raises(ValueError, match="depthwise"):
        _C.cachesim_simulate("depthwise", geometry(spec), {}, [L1], 0, False)


TINY = [
    ConvSpec(1, 4, 6, 6, 8, 3, 3, padding=(1, 1, 1, 1)),
    ConvSpec(2, 4, 7, 5, 16, 3, 1, stride=(2, 1), padding=(0, 1, 1, 0), dilation=(1, 2)),
    ConvSpec(1, 6, 6, 6, 6, 3, 3, padding=(1, 1, 1, 1), groups=3),
]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("spec", TINY, ids=lambda s: s.describe())
def test_reference_access_count_is_two_per_valid_tap_plus_one_per_output(spec, layout):
    from fastconv.explain.model import Geo

    spec = spec.with_(layout=layout)
    g = Geo(spec)
    r = simulate("reference", spec, [CacheLevel("L1", *L1)], sample_accesses=0, reuse_histogram=False)
    taps = spec.N * spec.K * spec.Cg * g.VH * g.VW
    assert r["accesses"] == 2 * taps + spec.N * spec.K * spec.Ho * spec.Wo


# Layers that take the AVX-512 nests: the blocked direct kernel (dense with two
# oc vectors, narrow groups across lanes), the depthwise channel-block tiles.
TINY_AVX512 = [
    ("direct", ConvSpec(1, 16, 6, 6, 32, 3, 3, padding=(1, 1, 1, 1))),
    ("direct", ConvSpec(1, 32, 5, 5, 32, 3, 3, padding=(1, 1, 1, 1), groups=8)),
    ("direct", ConvSpec(1, 4, 6, 6, 24, 3, 3, padding=(1, 1, 1, 1))),  # 16-channel general tiles
    ("depthwise", ConvSpec(1, 20, 9, 9, 20, 3, 3, padding=(1, 1, 1, 1), groups=20)),
    ("depthwise", ConvSpec(1, 20, 16, 16, 20, 5, 5, padding=(2, 2, 2, 2), groups=20)),
    ("depthwise", ConvSpec(1, 6, 11, 30, 12, 5, 5, stride=(2, 1), padding=(2, 2, 2, 2), groups=6)),  # NCHW rows
]


def _case_ids(c):
    return c[0] + ":" + c[1].describe() if isinstance(c, tuple) else c.describe()


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", [(a, sp) for a in ("reference", "im2col", "direct") for sp in TINY] + TINY_AVX512,
                         ids=_case_ids)
def test_everything_fits_in_l1_so_misses_are_the_distinct_lines(case, layout, isa):
    algo, spec = case
    spec = spec.with_(layout=layout)
    big_l1 = CacheLevel("L1", 1 << 20, 16, 64)  # holds every operand
    r = simulate(algo, spec, [big_l1], sample_accesses=0, reuse_histogram=False, isa=isa)
    rows = []
    for u in range(r["units_total"]):
        rows += record(algo, spec, unit=u, max_records=10 ** 7, isa=isa)
    # record() also returns accesses outside units (packing) with every unit range.
    lines = {(op, off // 64 + k) for op, off, nb, _ in rows for k in range((off + nb - 1) // 64 - off // 64 + 1)}
    assert r["levels"]["L1"]["misses"] == len(lines)
    assert r["levels"]["L1"]["accesses"] >= r["accesses"]


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("spec", [
    ConvSpec(1, 16, 9, 9, 32, 3, 3, padding=(1, 1, 1, 1), groups=16),  # channel multiplier 2
    ConvSpec(1, 20, 9, 11, 20, 3, 3, stride=(2, 2), padding=(1, 1, 1, 1), groups=20),
    ConvSpec(1, 40, 16, 16, 40, 7, 7, padding=(3, 3, 3, 3), groups=40),
], ids=lambda s: s.describe())
def test_depthwise_loop_nest_touches_every_input_and_output(spec, isa):
    lv = [CacheLevel("L1", *L1)]
    for layout in ("nchw", "nhwc"):
        spec = spec.with_(layout=layout)
        units = simulate("depthwise", spec, lv, sample_accesses=0, reuse_histogram=False, isa=isa)["units_total"]
        rows = []
        for u in range(units):
            rows += record("depthwise", spec, unit=u, max_records=10 ** 7, isa=isa)
        e = spec.element_size
        inputs = {off // e + i for op, off, nb, _ in rows if op == 0 for i in range(nb // e)}
        outputs = {off // e + i for op, off, nb, w in rows if op == 2 and w for i in range(nb // e)}
        assert len(inputs) == spec.N * spec.C * spec.H * spec.W
        assert len(outputs) == spec.N * spec.K * spec.Ho * spec.Wo


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("algo,spec", [
    ("direct", ConvSpec(2, 32, 56, 56, 64, 3, 3, padding=(1, 1, 1, 1))),
    ("depthwise", ConvSpec(2, 64, 56, 56, 64, 3, 3, padding=(1, 1, 1, 1), groups=64, layout="nhwc")),
])
def test_sampling_stays_close_to_the_full_simulation(algo, spec, isa):
    # 112 work units, an eighth of them simulated.
    levels = [CacheLevel("L1", 48 << 10, 12, 64), CacheLevel("L2", 2 << 20, 16, 64)]
    full = simulate(algo, spec, levels, sample_accesses=0, reuse_histogram=False, isa=isa)
    part = simulate(algo, spec, levels, sample_accesses=full["accesses"] // 8, reuse_histogram=False, isa=isa)
    assert part["units_counted"] < part["units_total"]
    for lv in ("L1", "L2"):
        f, p = full["levels"][lv]["misses"], part["levels"][lv]["misses"]
        assert abs(p - f) <= 0.10 * f, (lv, f, p)
    assert part["accesses"] == full["accesses"]  # every unit is generated, only some simulated


def test_machine_cache_levels_are_sane():
    levels = cache_levels()
    assert levels[0].name == "L1" and all(lv.size % (lv.ways * lv.line) == 0 for lv in levels)
    assert [lv.size for lv in levels] == sorted(lv.size for lv in levels)


def test_read_bandwidth_probe_runs():
    assert _C.read_bandwidth_gbs(1 << 16, 10) > 0
    with pytest.raises(ValueError):
        _C.read_bandwidth_gbs(10, 1)


def test_valgrind_view_drops_the_masked_stores():
    # The AVX2 direct tiles store NCHW output with vmaskmovps, which valgrind's cache
    # simulation does not see: valgrind_view drops exactly those stores.
    spec = ConvSpec(1, 8, 6, 6, 16, 3, 3, padding=(1, 1, 1, 1))
    lv = [CacheLevel("L1", *L1)]
    full = simulate("direct", spec, lv, sample_accesses=0, reuse_histogram=False, isa="avx2")
    seen = simulate("direct", spec, lv, sample_accesses=0, reuse_histogram=False, isa="avx2", valgrind_view=True)
    assert full["operands"]["output"]["accesses"] > 0 and "output" not in seen["operands"]
    out_lines = -(-16 * 6 * 6 * 4 // 64)
    assert full["levels"]["L1"]["misses"] - seen["levels"]["L1"]["misses"] == out_lines
    # NHWC stores are plain vector stores: nothing to drop.
    nhwc = spec.with_(layout="nhwc")
    a, b = (simulate("direct", nhwc, lv, sample_accesses=0, reuse_histogram=False, isa="avx2", valgrind_view=v)
            for v in (False, True))
    assert a["accesses"] == b["accesses"]
