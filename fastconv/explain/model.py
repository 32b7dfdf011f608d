"""Analytic cache model: bytes each memory level delivers, per algorithm.

Each algorithm's loop nest (the same nest the kernels run and cachesim.cpp
replays, with the blocking constants of fastconv._C.blocking()) is summarised
as a list of *terms*. A term is a number of bytes that has to come from below
a cache unless the cache holds the data between two uses, together with the
reuse distance of those uses: the bytes of distinct data touched in between.
Under fully associative LRU a use hits iff its reuse distance is smaller than
the cache, so

    bytes delivered to a cache of capacity C = sum of terms with distance >= C

Compulsory traffic (first touches) has infinite distance. The terms are the
ones the brief asks for, by name: input re-reads across output-channel
blocks, weight re-reads across pixel tiles, workspace writes and reads, and
the finer ones inside a tile. Bytes are counted in whole cache lines where a
loop touches contiguous runs (`run_bytes`). "L1" bytes are what the loads and
stores ask for (register <-> L1), L2 the bytes L1 misses bring in, and so on;
DRAM is what the last cache misses.

The model is deliberately first order: no conflict misses (the simulator has
them), no prefetching, no hardware write-combining; see docs/cache-validation.md
for how far it lands from the simulator and from cachegrind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..spec import ConvSpec

INF = float("inf")
LINE = 64

# The instruction sets the CPU kernels have paths for (fastconv._C.cpu_isa()),
# and the bytes of one vector register of each.
ISAS = ("portable", "avx2", "avx512")
VECTOR_BYTES = {"portable": 16, "avx2": 32, "avx512": 64}
# A read whose reuse distance is spread evenly over [0, D] is split into this
# many terms of distances D/16, 3D/16, ...
SLICES = 8


def blocking() -> dict:
    """The kernels' blocking constants, as fastconv._C.blocking() exports them from
    csrc/blocking.h: the one source (the model and the simulator read the same numbers)."""
    from .. import _C

    return dict(_C.blocking())


def current_isa(isa: str | None = None) -> str:
    """`isa`, checked, or the one the kernels use now (fastconv._C.cpu_isa())."""
    if isa is None:
        from .. import _C

        isa = _C.cpu_isa()
    if isa not in ISAS:
        raise ValueError(f"unknown CPU ISA {isa!r}; expected one of {', '.join(ISAS)}")
    return isa


def kernel_isa(spec: ConvSpec, isa: str) -> str:
    """The path direct and depthwise take: float64 runs the portable kernels on any ISA."""
    return isa if spec.element_size == 4 else "portable"


@dataclass
class Term:
    operand: str
    what: str
    bytes: float
    distance: float  # reuse distance in bytes; INF = compulsory
    # The part of `distance` made of short runs scattered over memory (their
    # lines land in sets at random); the rest is long contiguous runs, which
    # spread evenly over the sets.
    scattered: float = 0.0
    # Power-of-two strides: the reuse is also lost when `alias_count` lines
    # `alias_stride` bytes apart, all touched in between, overflow one set.
    alias_stride: int = 0
    alias_count: int = 0

    def aliased_out(self, sets: int, ways: int, line: int) -> bool:
        if not self.alias_count or not self.alias_stride:
            return False
        first = 0
        same = sum(1 for k in range(self.alias_count) if (k * self.alias_stride // line) % sets == first)
        return same > ways


@dataclass
class Model:
    algo: str
    l1_bytes: dict = field(default_factory=dict)  # operand -> bytes the loads/stores ask for
    terms: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def add(self, operand, what, nbytes, distance, scattered=0.0, alias_stride=0, alias_count=0):
        if nbytes > 0:
            self.terms.append(Term(operand, what, float(nbytes), float(distance), float(min(scattered, distance)),
                                   int(alias_stride), int(alias_count)))

    def traffic(self, capacity: float, ways: int = 0, line: int = LINE) -> float:
        """Bytes a cache of `capacity` bytes pulls from below. ways=0: fully
        associative LRU (a use misses iff its reuse distance >= capacity);
        otherwise `ways`-way set-associative: a use misses when at least `ways`
        of the distinct lines in between fall into its set; contiguous data
        puts distance/sets lines in every set, scattered data a Poisson number."""
        if ways <= 0:
            return sum(t.bytes for t in self.terms if t.distance >= capacity)
        sets = max(1, capacity // (ways * line))
        return sum(t.bytes * (1.0 if t.aliased_out(sets, ways, line) else
                              miss_probability(t.distance, sets, ways, line, t.scattered)) for t in self.terms)

    def bytes_per_level(self, levels) -> dict:
        """levels: ordered {cache name: bytes} (fully associative) or
        {cache name: (bytes, ways, line)}. Returns {level: bytes delivered};
        the level after the last cache is DRAM."""
        names = list(levels)
        out = {names[0]: float(sum(self.l1_bytes.values()))}
        below = names[1:] + ["DRAM"]
        for name, nxt in zip(names, below):
            cfg = levels[name]
            out[nxt] = self.traffic(*cfg) if isinstance(cfg, tuple) else self.traffic(cfg)
        return out


def miss_probability(distance: float, sets: int, ways: int, line: int = LINE, scattered: float = 0.0) -> float:
    """P(a set receives >= `ways` of the distinct lines in between): the
    contiguous part adds (distance - scattered)/line/sets lines to every set,
    the scattered part a Poisson number with mean scattered/line/sets."""
    if distance == INF:
        return 1.0
    even = (distance - scattered) / line / sets
    lam = scattered / line / sets
    need = ways - even  # scattered lines the set can still take before the reused line is evicted
    if need <= 0:
        return 1.0
    if lam <= 0:
        return 0.0

    def p_at_least(k: int) -> float:  # P(Poisson(lam) >= k)
        if k <= 0:
            return 1.0
        log_lam = math.log(lam)
        below = sum(math.exp(-lam + j * log_lam - math.lgamma(j + 1)) for j in range(k))
        return min(1.0, max(0.0, 1.0 - below))

    lo = math.floor(need)
    frac = need - lo
    # Interpolate between the integer thresholds around a fractional `need`.
    return (1 - frac) * p_at_least(lo) + frac * p_at_least(lo + 1)


def run_bytes(nbytes: float, elem: int) -> float:
    """Expected bytes of whole lines a contiguous run touches (element-aligned start)."""
    if nbytes <= 0:
        return 0.0
    return float(LINE + nbytes - elem)


def _valid_counts(out_len, in_len, k, stride, pad, dil):
    """Per output index, how many of the k taps land inside the input."""
    res = []
    for o in range(out_len):
        base = o * stride - pad
        res.append(sum(1 for t in range(k) if 0 <= base + t * dil < in_len))
    return res


class Geo:
    """Derived sizes of a spec used by every model."""

    def __init__(self, s: ConvSpec):
        self.s = s
        self.e = s.element_size
        self.Ho, self.Wo, self.Cg, self.Kg, self.G = s.Ho, s.Wo, s.Cg, s.Kg, s.groups
        self.vh = _valid_counts(s.Ho, s.H, s.R, s.stride[0], s.padding[0], s.dilation[0])
        self.vw = _valid_counts(s.Wo, s.W, s.S, s.stride[1], s.padding[2], s.dilation[1])
        self.VH, self.VW = sum(self.vh), sum(self.vw)
        self.input = s.N * s.C * s.H * s.W * self.e
        self.weight = s.K * s.Cg * s.R * s.S * self.e
        self.output = s.N * s.K * s.Ho * s.Wo * self.e
        self.image = s.C * s.H * s.W * self.e  # one image, all channels


def _gemm_terms(m: Model, e, M, N, K, b, *, a_name, b_name, reps, unit_fp, a_src_bytes_once,
                b_src_distance, c_name="output", a_src_written=0.0, b_src_bytes_once=0.0, a_row_bytes=None,
                items=1):
    """Terms of `reps` Goto GEMMs C[MxN] = A[MxK] B[KxN] (cachesim.cpp's gemm())."""
    MR, NR, MC, KC, NC = b["gemm_mr"], b["gemm_nr"], b["gemm_mc"], b["gemm_kc"], b["gemm_nc"]
    Mp = math.ceil(M / MR) * MR
    Np = math.ceil(N / NR) * NR
    n_nc, n_kc, n_mc = math.ceil(N / NC), math.ceil(K / KC), math.ceil(M / MC)
    n_mr_total = sum(math.ceil(min(MC, M - ic) / MR) for ic in range(0, M, MC))
    kc, nc, mc = min(KC, K), min(NC, N), min(MC, M)
    bp_panel = kc * math.ceil(nc / NR) * NR * e
    ap_block = math.ceil(mc / MR) * MR * kc * e
    bp_micro, ap_micro, c_tile = kc * NR * e, kc * MR * e, MR * NR * e
    # Loads and stores the kernels ask for.
    m.l1_bytes[b_name] = m.l1_bytes.get(b_name, 0) + reps * K * N * e
    m.l1_bytes[a_name] = m.l1_bytes.get(a_name, 0) + reps * n_nc * M * K * e
    m.l1_bytes["pack_b"] = m.l1_bytes.get("pack_b", 0) + reps * (K * Np * e + K * Np * e * n_mr_total)
    m.l1_bytes["pack_a"] = m.l1_bytes.get("pack_a", 0) + reps * n_nc * (Mp * K * e + Mp * K * e * math.ceil(N / NR))
    m.l1_bytes[c_name] = m.l1_bytes.get(c_name, 0) + reps * (2 * n_kc - 1) * M * N * e
    # B source: read once per GEMM for packing; its distance since it was
    # last touched is b_src_distance (the column buffer just written, or the input).
    if isinstance(b_src_distance, tuple):
        # B is the freshly written column buffer, read back in the order written;
        # the i-th GEMM of a tile also has i GEMMs' packing and output in between.
        written, extra, items = b_src_distance
        per_item = bp_panel + ap_block + M * N * e
        for i in range(items):
            m.add(b_name, "GEMM packs B from the column buffer", reps * K * N * e / items,
                  written + extra + i * per_item)
    else:
        m.add(b_name, "GEMM packs B (first touch)", b_src_bytes_once, INF)
        m.add(b_name, "GEMM packs B (reads the B operand once per GEMM)", reps * K * N * e - b_src_bytes_once,
              b_src_distance)
    # A source re-read per NC panel; across GEMMs (tiles) it is the same
    # weight, reused at the distance of one tile's footprint.
    m.add(a_name, "GEMM packs A (first touch)", a_src_bytes_once, INF)
    # Rows of A that are short runs inside longer rows (one group's columns of
    # the column buffer) cost whole lines.
    a_reads = reps * n_nc * M * (a_row_bytes if a_row_bytes is not None else K * e) - a_src_bytes_once
    # A written just before (the column buffer) and read back in the order it
    # was written: under LRU the distance is the whole buffer for every line.
    if a_src_written:
        # The i-th GEMM of a tile also has i GEMMs' packing and output in between.
        per_item = bp_panel + ap_block + M * N * e
        for i in range(items):
            m.add(a_name, "GEMM packs A from the column buffer", a_reads / items,
                  a_src_written + bp_panel + i * per_item)
    else:
        m.add(a_name, "GEMM re-packs A per GEMM item", a_reads, unit_fp)
    # Packed buffers: written (write-allocate) over and over; between two
    # rewrites of the same bytes lies one KC panel (B) or one MC block (A).
    pc_fp = bp_panel + 2 * M * kc * e + M * N * e
    ic_fp = ap_block + bp_panel + mc * kc * e + mc * N * e
    m.add("pack_b", "packed B buffer first touch", bp_panel, INF)
    m.add("pack_b", "packed B rewritten per KC panel", reps * K * Np * e - bp_panel, pc_fp)
    m.add("pack_a", "packed A buffer first touch", ap_block, INF)
    m.add("pack_a", "packed A rewritten per MC block", reps * n_nc * Mp * K * e - ap_block, ic_fp)
    # Micro-kernel reads of packed B: the first after packing is at the
    # distance of the whole panel; across MC blocks likewise; across MR
    # micro-tiles only one micro-panel of each apart.
    m.add("pack_b", "micro-kernel reads packed B after packing", reps * K * Np * e * n_mc, bp_panel + ap_block)
    m.add("pack_b", "packed-B micro-panel re-read per MR rows", reps * K * Np * e * (n_mr_total - n_mc),
          bp_micro + ap_micro + c_tile)
    # Packed A: re-read per NR micro-panel of B, one A block apart.
    m.add("pack_a", "packed-A block re-read per NR columns", reps * n_nc * Mp * K * e * (math.ceil(N / NR) - 1),
          ap_block + bp_micro)
    m.add("pack_a", "micro-kernel reads packed A after packing", reps * n_nc * Mp * K * e, ap_block)
    # C: read-modify-write once per KC panel, one panel's footprint apart.
    m.add(c_name, "GEMM writes C (first touch)", reps * M * N * e, INF)
    # The write right after the read hits; only the read may miss.
    m.add(c_name, "C re-read per KC panel", reps * (n_kc - 1) * M * N * e, pc_fp)


def _gemm_nocopy_terms(m: Model, e, M, N, K, b, *, a_name, b_name, reps, unit_fp, a_src_bytes_once,
                       b_src_distance, b_src_bytes_once=0.0, a_src_written=0.0, items=1, a_row_bytes=None,
                       c_name="output", b_alias=(0, 0)):
    """Terms of `reps` no-copy GEMMs C[MxN] = A[MxK] B[KxN] (cachesim.cpp's gemm_nocopy():
    per KC block, per NR columns, per MR rows, k innermost; A and B read in place)."""
    MR, NR, KC = b["gemm_mr"], b["gemm_nr"], b["gemm_kc"]
    n_kc, n_nr, n_mr = math.ceil(K / KC), math.ceil(N / NR), math.ceil(M / MR)
    kc = min(KC, K)
    a_row = a_row_bytes if a_row_bytes is not None else K * e
    m.l1_bytes[a_name] = m.l1_bytes.get(a_name, 0) + reps * M * K * e * n_nr
    m.l1_bytes[b_name] = m.l1_bytes.get(b_name, 0) + reps * K * N * e * n_mr
    m.l1_bytes[c_name] = m.l1_bytes.get(c_name, 0) + reps * (2 * n_kc - 1) * M * N * e
    a_block = M * kc * e * (a_row / (K * e))  # one KC block of A, in lines
    b_micro, a_micro = kc * NR * e, MR * kc * e
    # A: its first read in each GEMM, then once more per NR columns of B.
    a_first = reps * M * a_row - a_src_bytes_once
    m.add(a_name, "GEMM reads A (first touch)", a_src_bytes_once, INF)
    if a_src_written:
        per_item = a_block + kc * N * e + M * N * e
        for i in range(items):
            m.add(a_name, "GEMM reads A from the column buffer", a_first / items, a_src_written + i * per_item)
    else:
        m.add(a_name, "GEMM re-reads A per GEMM item", a_first, unit_fp)
    m.add(a_name, "A re-read per NR columns of B", reps * M * a_row * (n_nr - 1), a_block + b_micro)
    # B: read by the first MR rows, then re-read by the others from a small panel.
    if isinstance(b_src_distance, tuple):
        written, extra, n_items = b_src_distance
        per_item = a_block + kc * N * e + M * N * e
        for i in range(n_items):
            m.add(b_name, "GEMM reads B from the column buffer", reps * K * N * e / n_items,
                  written + extra + i * per_item)
    else:
        m.add(b_name, "GEMM reads B (first touch)", b_src_bytes_once, INF)
        m.add(b_name, "GEMM re-reads B per GEMM item", reps * K * N * e - b_src_bytes_once, b_src_distance)
    # b_alias: (stride, count) of the micro-panel's separate runs (a power-of-two
    # stride puts them all in one set).
    m.add(b_name, "B micro-panel re-read per MR rows of A", reps * K * N * e * (n_mr - 1), b_micro + a_micro + MR * NR * e,
          alias_stride=b_alias[0], alias_count=min(b_alias[1], kc))
    m.add(c_name, "GEMM writes C (first touch)", reps * M * N * e, INF)
    m.add(c_name, "C re-read per KC block", reps * (n_kc - 1) * M * N * e, a_block + kc * N * e + M * N * e)


def model_reference(s: ConvSpec, b: dict, isa: str = "avx2") -> Model:
    g = Geo(s)
    e, m = g.e, Model("reference")
    taps = s.N * s.K * s.Cg * g.VH * g.VW
    m.l1_bytes = {"input": taps * e, "weight": taps * e, "output": g.output}
    wk = s.Cg * s.R * s.S * e  # one output channel's filter
    if s.layout == "nchw":
        win = s.Cg * s.R * run_bytes(((s.S - 1) * s.dilation[1] + 1) * e, e)
        row_in = s.Cg * s.R * run_bytes(s.W * e, e)
    else:
        win = s.R * s.S * run_bytes(s.Cg * e, e)
        row_in = s.R * s.W * s.Cg * e
    nhwc = s.layout == "nhwc"
    # Bytes of one group's input a unit (n, k) touches: NHWC with groups reads
    # a short run per pixel, whole lines, shared with the neighbouring groups.
    group_in = s.H * s.W * (run_bytes(s.Cg * e, e) if nhwc and s.groups > 1 else s.Cg * e)
    # One unit writes one output channel: NHWC touches a line per pixel.
    out_k = s.Ho * s.Wo * (LINE if nhwc and s.K * e > LINE else e)
    f_pix = wk + win + LINE
    f_row = wk + row_in + s.Wo * e
    f_k = wk + group_in + out_k
    f_img = g.weight + g.image + s.K * s.Ho * s.Wo * e
    m.add("weight", "filters (first touch)", g.weight, INF)
    m.add("weight", "filter re-read per image", (s.N - 1) * g.weight, f_img)
    m.add("input", "input (first touch)", g.input, INF)
    m.add("input", "input re-read per output channel", s.N * s.K * group_in - g.input, f_k)
    rows_read = s.N * s.K * g.VH * (row_in / s.R)
    # NCHW rows are Cg*R separate runs of W elements: scattered over the sets.
    m.add("input", "input rows re-read per output row", rows_read - s.N * s.K * group_in, f_row,
          row_in if s.layout == "nchw" else 0.0)
    per_pix = s.N * s.K * sum(v for v in g.vh) * s.Wo * (win / s.R)
    m.add("input", "input window re-read per output pixel", per_pix - rows_read, f_pix, win)
    m.add("output", "output (first touch)", g.output, INF)
    if nhwc:
        m.add("output", "output lines re-touched by each output channel (NHWC)",
              max(0.0, s.N * s.K * out_k - g.output), f_k)
    m.notes.append("reference: the plain loop nest; the weight of one output channel stays in L1")
    return m


def im2col_tile(s: ConvSpec, b: dict) -> tuple[int, int, int, bool]:
    """(pixels per tile, tiles, GEMM depth C/g*R*S, no column buffer) as im2col.cpp's make_tiling."""
    kdim = s.Cg * s.R * s.S
    kall = s.C * s.R * s.S
    total = s.N * s.Ho * s.Wo
    direct = (s.R == 1 and s.S == 1 and s.stride == (1, 1) and tuple(s.padding) == (0, 0, 0, 0))
    if direct:  # no column buffer: one tile
        return total, 1, kdim, direct
    tile = min(total, max(b["im2col_min_tile_pixels"], b["im2col_max_workspace_bytes"] // max(1, kall * s.element_size)))
    count = _ceil_div(total, tile)
    tile = _ceil_div(total, count)
    return tile, _ceil_div(total, tile), kdim, direct


def model_im2col(s: ConvSpec, b: dict, isa: str = "avx2") -> Model:
    g = Geo(s)
    e, m = g.e, Model("im2col")
    P, T, kdim, direct = im2col_tile(s, b)
    kall = s.C * s.R * s.S
    pixels = s.N * s.Ho * s.Wo
    col = 0 if direct else kall * P * e
    ich, ipx, min_macs = b["im2col_item_channels"], b["im2col_item_pixels"], b["im2col_item_min_macs"]
    # GEMM items (make_items): balanced blocks; the inner block grows until an
    # item holds im2col_item_min_macs. NCHW: channels x pixels, NHWC: pixels x channels.
    even = lambda n, mx: _ceil_div(n, _ceil_div(n, max(1, mx)))  # noqa: E731
    if s.layout == "nchw" and direct:
        # Whole planes by blocks of channels; a layer of one item is cut in two.
        plane, ich, ipx = s.Ho * s.Wo, b["im2col_pointwise_item_channels"], s.Ho * s.Wo
        if s.N * s.groups * _ceil_div(s.Kg, ich) < 2:
            if s.Kg >= b["im2col_pointwise_split_channels"]:
                ich = _ceil_div(s.Kg, 2)
            else:
                ipx = _ceil_div(plane, 2)
        ch = even(s.Kg, ich)
        px = even(plane, max(ipx, _ceil_div(min_macs, ch * kdim)))
    elif s.layout == "nchw":
        ch = even(s.Kg, ich)
        px = even(P, max(ipx, _ceil_div(min_macs, ch * kdim)))
    else:
        px = even(P, ipx)
        ch = even(s.Kg, max(b["im2col_nhwc_item_channels"], _ceil_div(min_macs, px * kdim)))
    n_ch, n_px = _ceil_div(s.Kg, ch), _ceil_div(P, px)
    reps = T * s.groups * n_ch * n_px
    kc = min(b["gemm_kc"], kdim)
    item_fp = (kdim * (px + ch) + kc * (px + ch) + px * ch) * e  # sources, packed panels, C
    rows_per_tile = P / s.Wo
    in_win = s.C * min(s.H, rows_per_tile * s.stride[0] + (s.R - 1) * s.dilation[0]) * s.W * e
    m.l1_bytes = {}
    m.add("input", "input (first touch)", g.input, INF)
    if not direct:
        taps = s.N * g.VH * g.VW
        m.l1_bytes = {"input": s.C * taps * e, "column": kall * pixels * e}
        # The buffer is reused by every tile: only its first touch is compulsory.
        m.add("column", "column buffer (first touch)", col, INF)
        m.add("column", "column buffer rewritten per tile", (T - 1) * col, col + in_win)
        m.add("input", "input rows shared by neighbouring tiles re-read", max(0.0, T * in_win - g.input), col + in_win)
        if s.layout == "nchw":
            # Loop ci, r, s over the tile's output-row runs.
            pass_bytes = min(in_win / s.C, rows_per_tile * s.stride[0] * s.W * e + LINE)
            m.add("input", "input re-read per filter row r (same channel)",
                  T * s.C * max(0.0, s.R * pass_bytes - in_win / s.C), s.S * P * e + pass_bytes)
            m.add("input", "input re-read per filter column s (same channel, row)",
                  T * s.C * s.R * (s.S - 1) * pass_bytes, P * e + pass_bytes)
        else:
            # Loop over pixels, taps: runs of Cg channels; neighbouring pixels share taps.
            pix_fp = s.R * s.S * run_bytes(s.Cg * e, e) + kall * e
            rows = s.N * g.VH * s.W * s.C * e
            m.add("input", "input re-read by neighbouring pixels", max(0.0, s.C * taps * e - rows), pix_fp * s.S)
            m.add("input", "input rows re-read per output row", max(0.0, rows - T * in_win), s.Wo * pix_fp)
    gemm_terms = _gemm_terms if b.get("gemm_pack", 0) else _gemm_nocopy_terms
    if s.layout == "nchw":
        gemm_terms(m, e, ch, px, kdim, b, a_name="weight", b_name="input" if direct else "column", reps=reps,
                    unit_fp=item_fp, a_src_bytes_once=g.weight,
                    b_src_distance=item_fp if direct else (col, in_win, n_px), b_src_bytes_once=g.input if direct else 0.0,
                    **({} if b.get("gemm_pack", 0) else
                       {"b_alias": ((s.H * s.W if direct else P) * e, kdim)}))
    else:
        gemm_terms(m, e, px, ch, kdim, b, a_name="input" if direct else "column", b_name="weight", reps=reps,
                    unit_fp=item_fp, a_src_bytes_once=g.input if direct else 0.0, b_src_distance=item_fp,
                    a_src_written=0.0 if direct else col, b_src_bytes_once=g.weight,
                    a_row_bytes=run_bytes(kdim * e, e) if s.groups > 1 else None, items=n_px,
                    **({} if b.get("gemm_pack", 0) else {"b_alias": (kdim * e, b["gemm_nr"])}))
    if direct:
        # The input is the GEMM operand itself: its first touch is counted there.
        m.terms = [t for t in m.terms if not (t.operand == "input" and t.what == "input (first touch)")]
        m.notes.append("im2col: 1x1 stride-1 conv, GEMM straight on the input (no column buffer)")
    m.notes.append(f"im2col: {T} tile(s) of {P} pixels; column buffer {col / 1024:.0f} KiB; "
                   f"{reps} GEMM items of ~{ch:.0f} channels x {px:.0f} pixels x {kdim} deep (BLAS "
                   + (f"modelled as Goto GEMM MR={b['gemm_mr']} NR={b['gemm_nr']} MC={b['gemm_mc']} "
                      f"KC={b['gemm_kc']} NC={b['gemm_nc']})" if b.get("gemm_pack", 0) else
                      f"modelled as MKL's no-copy kernel, MR={b['gemm_mr']} NR={b['gemm_nr']} KC={b['gemm_kc']})"))
    if _runs_pointwise_gemm(s, b, isa):
        m.notes.append("im2col: this 1x1 layer runs our AVX-512 GEMM (csrc/pointwise_gemm_avx512.cpp, "
                       "panels packed per task), which this model does not describe: the terms above are "
                       "the BLAS path's")
    return m


def _runs_pointwise_gemm(s: ConvSpec, b: dict, isa: str) -> bool:
    """pointwise_gemm_unpacked_applies (csrc/pointwise_gemm_avx512.cpp): im2col_conv2d runs our GEMM."""
    strided = tuple(s.stride) != (1, 1)
    return (kernel_isa(s, isa) == "avx512" and s.groups == 1
            and s.R == 1 and s.S == 1 and not any(s.padding)
            and 0 < s.N * s.Ho * s.Wo <= b["gemm_avx512_unpacked_max_pixels"]
            and (s.layout == "nhwc" or (strided and s.Ho * s.Wo <= b["gemm_avx512_nchw_via_nhwc_max_pixels"])))


def direct_plan(s: ConvSpec, b: dict, isa: str = "avx2"):
    """(channels per vector, oc blocks, vectors per tile, pixel tile, oc tiles) of direct.cpp's
    general tiles: with AVX-512, groups of more than 8 output channels take 16-channel zmm blocks."""
    zmm = kernel_isa(s, isa) == "avx512" and s.Kg > b["direct_oc_block"]
    vec = b["direct_avx512_oc_block"] if zmm else b["direct_oc_block"]
    blocks = math.ceil(s.Kg / vec)
    if blocks == 1:
        vectors, tile = 1, b["direct_avx512_pixel_tile_single" if zmm else "direct_pixel_tile_single"]
    else:
        vectors, tile = b["direct_oc_vectors"], b["direct_avx512_pixel_tile" if zmm else "direct_pixel_tile"]
    oc_tiles = math.ceil(blocks / vectors)
    return vec, blocks, vectors, tile, oc_tiles


def direct_blocked_applies(s: ConvSpec, b: dict, isa: str) -> bool:
    """direct_blocked_avx512.cpp runs float32 on AVX-512 when every lane is an output channel:
    Cg, Kg multiples of 16, or narrow groups (Cg == Kg in {2, 4, 8}) packed across lanes."""
    if kernel_isa(s, isa) != "avx512":
        return False
    lanes = b["direct_avx512_oc_block"]
    narrow = s.groups > 1 and s.Kg == s.Cg and s.Kg in (2, 4, 8) and s.groups % (lanes // s.Kg) == 0
    return narrow or (s.Cg % lanes == 0 and s.Kg % lanes == 0)


def model_direct_blocked(s: ConvSpec, b: dict) -> Model:
    """direct_blocked_avx512.cpp (cachesim.cpp's run_direct_blocked): the input copied once,
    zero-padded, to xt[N][GB][Hp][Wp][PS] (Cg*gpv floats a pixel, PS one line more where that
    is a multiple of 4 lines); tasks (n, group block, output block, row block) run passes over
    the input channels (whole blocks of direct_blocked_avx512_cin_block whose weight panel fits
    direct_blocked_avx512_panel_bytes): near-equal tiles of one row (or two rows of a narrow
    plane) in registers over the pass, partial sums in memory between passes. The panel stays
    in L1 across a pass's tiles: the weights come from below once per task and pass."""
    g = Geo(s)
    e, m = g.e, Model("direct")
    lanes = b["direct_avx512_oc_block"]
    gpv = lanes // s.Kg if s.Kg < lanes else 1
    ocv = 2 if gpv == 1 and s.Kg % (2 * lanes) == 0 else 1
    GB, CB = s.groups // gpv, s.Cg * gpv
    OB = s.Kg * gpv // (lanes * ocv)
    Hp, Wp = s.H + s.padding[0] + s.padding[1], s.W + s.padding[2] + s.padding[3]
    PT = b["direct_blocked_avx512_pixel_tile"] if ocv == 1 else b["direct_blocked_avx512_pixel_tile_pair"]
    sw, dw = s.stride[1], s.dilation[1]
    cbn = min(s.Cg, b["direct_blocked_avx512_cin_block"])
    per_channel = s.R * s.S * ocv * lanes * e
    cpass = min(s.Cg, max(1, b["direct_blocked_avx512_panel_bytes"] // per_channel // cbn) * cbn)
    npass = _ceil_div(s.Cg, cpass)
    rb_max = b["direct_blocked_avx512_row_block"]
    blocks = _ceil_div(s.Ho, rb_max)
    if s.N * GB * blocks % 2 and blocks < s.Ho:  # an even task count (two threads)
        blocks += 1
    row_block = _ceil_div(s.Ho, blocks)
    RB = _ceil_div(s.Ho, row_block)
    two_rows = 2 * s.Wo <= PT
    if two_rows:  # a tile of two rows of the whole width (one row for an odd last one)
        widths = [s.Wo]
        tiles_img = sum(_ceil_div(min(row_block, s.Ho - r0), 2) for r0 in range(0, s.Ho, row_block))
    else:
        widths, left = [], s.Wo
        while left > 0:  # near-equal tiles: 56 -> 19, 19, 18
            np_ = _ceil_div(left, _ceil_div(left, PT))
            widths.append(np_)
            left -= np_
        tiles_img = s.Ho * len(widths)
    T = len(widths)
    rows_tile = 2 if two_rows else 1
    span = lambda n: min(Wp, (n - 1) * sw + (s.S - 1) * dw + 1)  # noqa: E731  padded columns a tile reads
    row_span = min(Wp, (s.Wo - 1) * sw + (s.S - 1) * dw + 1)
    pix = CB * e  # bytes of a pixel that are read (a pad line is never touched)
    pixp = cpass * gpv * e  # of those, one pass's
    PS = CB if CB % (4 * lanes) else CB + b["direct_blocked_avx512_pixel_pad"]
    xt_gb = Hp * Wp * pix  # one image's group block
    xt_span = Hp * Wp * PS * e  # the addresses it spans
    xt = s.N * GB * xt_gb
    w_block = s.R * s.S * s.Cg * ocv * lanes * e
    panel = s.R * s.S * cpass * ocv * lanes * e
    packed = GB * OB * w_block
    out_blk = s.Ho * s.Wo * ocv * lanes * e
    win_rows = (rows_tile - 1) * s.stride[0] + (s.R - 1) * s.dilation[0] + 1
    win_avg = win_rows * sum(span(w) for w in widths) / T * pixp
    slot = max(widths) * rows_tile * ocv * lanes * e  # one tile's partial sums
    # A tile's stores: NHWC whole lines; NCHW a short run in each of ocv x 16
    # planes, lines scattered over the sets.
    out_tile = (ocv * lanes * rows_tile * sum(run_bytes(w * e, e) for w in widths) / T if s.layout == "nchw"
                else max(widths) * rows_tile * ocv * lanes * e)
    scat = out_tile if s.layout == "nchw" else 0.0
    f_tile = panel + win_avg + slot + out_tile
    f_row = panel + s.R * row_span * pixp + T * slot + s.Wo * ocv * lanes * e
    task_rows = min(Hp, (row_block - 1) * s.stride[0] + (s.R - 1) * s.dilation[0] + 1)
    f_sweep = panel + task_rows * row_span * pixp + row_block * s.Wo * ocv * lanes * e  # one pass of a task
    f_task = w_block + task_rows * Wp * PS * e + row_block * s.Wo * ocv * lanes * e
    f_pass = xt_span + w_block + out_blk  # one output block over an image's group block
    f_img = GB * (xt_span + OB * (w_block + out_blk))
    tiles = s.N * GB * OB * tiles_img
    tile_rows = s.N * GB * OB * tiles_img // T  # rows (or row pairs) of tiles
    win_read = tile_rows * win_rows * sum(span(w) for w in widths) * pix
    m.l1_bytes = {
        "input": g.input,
        "column": xt + win_read,
        "weight": g.weight,
        "packed_weight": packed + tiles * w_block,
        "scratch": (2 * npass - 1) * s.N * GB * OB * s.Ho * s.Wo * ocv * lanes * e,
        "output": g.output,
    }
    m.add("input", "input read once by the padded copy", g.input, INF)
    m.add("column", "padded copy written (first touch)", xt, INF)
    m.add("weight", "weights read once to pack them", g.weight, INF)
    m.add("packed_weight", "packed weights written (first touch)", packed, INF)
    m.add("packed_weight", "packed weights first read after packing", packed, xt + packed + g.weight)
    m.add("packed_weight", "packed weights re-read per image", (s.N - 1) * packed, f_img)
    m.add("packed_weight", "weight block re-read per row block", s.N * (RB - 1) * packed, f_task)
    m.add("packed_weight", "weight panel re-read per pixel tile of a pass", (tiles - s.N * RB * GB * OB) * w_block,
          f_tile, scat)
    # Partial sums: a slot per tile of a task (per thread, reused by its next tasks),
    # written by every pass, read back by the next one a task's pass later.
    slots = (_ceil_div(row_block, 2) if two_rows else row_block * T) * slot
    m.add("scratch", "partial-sum slots (first touch)", slots, INF)
    part = s.N * GB * OB * s.Ho * s.Wo * ocv * lanes * e
    m.add("scratch", "partial sums read by the next pass", (npass - 1) * part, f_sweep)
    # xt: each row block reads its rows once per output block; rows shared by
    # consecutive output rows, and columns shared by neighbouring tiles, again.
    rows_touched = min(Hp, (s.Ho - 1) * s.stride[0] + (s.R - 1) * s.dilation[0] + 1) * row_span * pix
    for n in range(s.N):  # the copy of every image comes first
        m.add("column", "padded copy first read", GB * rows_touched, xt + packed + g.weight + n * f_img)
    m.add("column", "padded copy re-read per output block", s.N * GB * (OB - 1) * rows_touched, f_pass)
    rows_read = tile_rows * win_rows * row_span * pix
    m.add("column", "padded rows re-read per output row", max(0.0, rows_read - s.N * GB * OB * rows_touched), f_row)
    m.add("column", "tile window columns shared by neighbouring tiles", max(0.0, win_read - rows_read), f_tile, scat)
    m.add("output", "output (first touch)", g.output, INF)
    if s.layout == "nchw":
        # A tile scatters each pixel's 16 channels to 16 planes; the next tile of the
        # row continues the same lines one tile's footprint later.
        touched = s.N * s.K * s.Ho * sum(run_bytes(w * e, e) for w in widths)
        m.add("output", "output lines re-touched by the next pixel tile", max(0.0, touched - g.output), f_tile,
              scat, alias_stride=s.Ho * s.Wo * e, alias_count=ocv * lanes)
        _scatter_terms(m, s, widths, ocv * lanes)
    m.notes.append(f"direct (AVX-512, padded channel-blocked input): {ocv}x{lanes} channels x {T} tile(s) of "
                   f"<= {PT} pixels per row{' (two rows a tile)' if two_rows else ''}; {gpv} group(s) per vector; "
                   f"{npass} pass(es) of {cpass} channels, weight panel {panel / 1024:.1f} KiB; "
                   f"padded input {xt / 1024:.0f} KiB")
    return m


def _scatter_terms(m: Model, s: ConvSpec, widths, channels: int):
    """NCHW stores of the AVX-512 direct tiles: a 16-lane scatter per pixel, lane i to
    channel i's plane. Within a tile of np pixels, np - (lines of the run) stores land
    on the line the previous pixel's store just touched, `channels` lines (one per
    plane) in between: hits, unless the plane stride maps them all to one set."""
    e = s.element_size
    again = s.N * s.K * s.Ho * sum(w - run_bytes(w * e, e) / LINE for w in widths) * LINE
    m.add("output", "output line re-touched by the next pixel's scatter", max(0.0, again), channels * LINE,
          alias_stride=s.Ho * s.Wo * e, alias_count=channels)


def model_direct(s: ConvSpec, b: dict, isa: str = "avx2") -> Model:
    if direct_blocked_applies(s, b, isa):
        return model_direct_blocked(s, b)
    g = Geo(s)
    e, m = g.e, Model("direct")
    vec, blocks, vectors, P, OT = direct_plan(s, b, isa)
    RB = b["direct_row_block"]
    row_blocks = _ceil_div(s.Ho, RB)
    cin = max(1, b["direct_cin_block_bytes"] // (s.R * s.S * vectors * vec * e))
    cin = min(cin, s.Cg)
    nblk = _ceil_div(s.Cg, cin)
    sw, pl, dw = s.stride[1], s.padding[2], s.dilation[1]
    ow_lo = min(s.Wo, max(0, _ceil_div(pl, sw)))
    ow_hi = min(s.Wo, max(ow_lo, (s.W - 1 - (s.S - 1) * dw + pl) // sw + 1))
    interior_tiles = _ceil_div(ow_hi - ow_lo, P)
    border = [ow for ow in range(s.Wo) if not (ow_lo <= ow < ow_hi)]
    tap_cols = interior_tiles * s.S + sum(g.vw[ow] for ow in border)  # per row and channel
    tiles_row = interior_tiles + len(border)
    P_eff = _ceil_div(ow_hi - ow_lo, interior_tiles) if interior_tiles else 1  # balanced widths
    panel = s.Cg * s.R * s.S * vec * e
    packed = s.groups * blocks * panel
    nvs = [min(vectors, blocks - ot * vectors) for ot in range(OT)]
    wt_tiles = [nv * panel for nv in nvs]
    wt_avg = sum(wt_tiles) / OT
    wblock = wt_avg * cin / s.Cg  # one input-channel block's weights of an oc tile
    nhwc_groups = s.layout == "nhwc" and s.groups > 1
    win_w = min(s.W, (P_eff - 1) * sw + (s.S - 1) * dw + 1)
    if s.layout == "nchw":
        px_run = lambda n: run_bytes(n * e, e)  # noqa: E731  a run of n pixels of one channel
        tile_in_c = s.R * px_run(win_w)  # per channel
        row_in_c = s.R * px_run(s.W)
    elif not nhwc_groups:
        tile_in_c = s.R * win_w * e * (1 + (LINE - e) / max(1, s.Cg * e * win_w))
        row_in_c = s.R * s.W * e
    else:
        # A group reads Cg of each pixel's C channels: a short run per pixel,
        # whole lines, shared with the neighbouring groups.
        tile_in_c = s.R * win_w * run_bytes(s.Cg * e, e) / s.Cg
        row_in_c = s.R * s.W * run_bytes(s.Cg * e, e) / s.Cg
    acc_tile = vectors * vec * P_eff * e
    partial = RB * s.Wo * vectors * vec * e if nblk > 1 else 0
    scattered = s.layout == "nchw"
    f_tile = wblock + cin * tile_in_c + acc_tile
    f_row = wblock + cin * row_in_c + vectors * vec * s.Wo * e
    rows_rb = min(s.H, (RB - 1) * s.stride[0] + (s.R - 1) * s.dilation[0] + 1)
    f_pass = wblock + cin * rows_rb * row_in_c / s.R + partial  # one channel block over a task's rows
    f_task = wt_avg + s.Cg * rows_rb * row_in_c / s.R + partial + vectors * vec * RB * s.Wo * e
    f_img_task = wt_avg + s.Cg * s.H * row_in_c / s.R + vectors * vec * s.Ho * s.Wo * e
    f_img = packed + g.image + s.K * s.Ho * s.Wo * e
    ch_total = s.N * s.groups * sum(nvs) * vec
    fuse = e == 4 and kernel_isa(s, isa) != "portable" and s.Kg % (vectors * vec) == 0
    taps_rows = s.N * s.groups * OT * s.Cg * g.VH  # (n, g, ot, c, oh, valid r)
    m.l1_bytes = {
        "weight": g.weight,
        "packed_weight": packed + ch_total * e * s.Cg * g.VH * tap_cols,
        "input": s.N * s.groups * OT * s.Cg * g.VH * g.VW * e,
        # Two tap-table offsets read per (c, tap); the tables written per row (and border pixel).
        "scratch": taps_rows * tap_cols * 16 + s.N * s.groups * OT * nblk * 16 * (
            g.VH * s.S + sum(g.vh) * sum(g.vw[ow] for ow in border)),
        "output": g.output,
    }
    if partial:
        m.l1_bytes["column"] = s.N * s.groups * OT * s.Ho * s.Wo * vectors * vec * e * 2 * (nblk - 1)
    if not fuse:
        m.l1_bytes["scratch"] += (ch_total + s.N * s.K) * s.Ho * s.Wo * e
    m.add("weight", "weights read once to pack them", g.weight, INF)
    m.add("packed_weight", "packed weights written (first touch)", packed, INF)
    m.add("packed_weight", "packed weights first read after packing", packed, packed + g.weight)
    per_task = s.N * s.groups * sum(wt_tiles) * row_blocks  # each task reads its oc tile's weights
    m.add("packed_weight", "weights re-read per row-block task", per_task - s.N * packed, f_task)
    m.add("packed_weight", "weights re-read per image", (s.N - 1) * packed, f_img)
    uses = s.N * s.groups * sum(wt * s.Ho * tiles_row for wt in wt_tiles)
    m.add("packed_weight", "weight block re-read per pixel tile", uses - per_task, f_tile,
          cin * tile_in_c if scattered else 0.0)
    m.add("input", "input (first touch)", g.input, INF)
    group_in = s.H * s.W * (run_bytes(s.Cg * e, e) if nhwc_groups else s.Cg * e)
    per_ot = s.N * s.groups * group_in
    if nhwc_groups:
        m.add("input", "input lines re-read by each group (NHWC)", per_ot - g.input, f_img_task)
        out_lines = s.N * s.groups * s.Ho * s.Wo * run_bytes(s.Kg * e, e)
        m.add("output", "output lines re-touched by each group (NHWC)", max(0.0, out_lines - g.output), f_img_task)
    m.add("input", "input re-read per output-channel tile", (OT - 1) * per_ot, f_img_task)
    rows_tasks = s.N * s.groups * OT * s.Cg * sum(
        min(s.H, max(0, min(s.H, (min(s.Ho, (rb + 1) * RB) - 1) * s.stride[0] - s.padding[0] + (s.R - 1) * s.dilation[0] + 1)
                      - max(0, rb * RB * s.stride[0] - s.padding[0]))) for rb in range(row_blocks)) * row_in_c / s.R
    # Rows counted in the same unit as rows_tasks (whole-line runs): on narrow NCHW
    # planes a row's run shares lines with its neighbours, so per_ot would not do.
    rows_img = len({oh * s.stride[0] - s.padding[0] + r * s.dilation[0] for oh in range(s.Ho) for r in range(s.R)}
                   & set(range(s.H)))
    rows_once = s.N * s.groups * OT * s.Cg * rows_img * row_in_c / s.R
    m.add("input", "input rows shared by neighbouring row blocks re-read", max(0.0, rows_tasks - rows_once), f_task)
    rows_read = s.N * s.groups * OT * g.VH * s.Cg * row_in_c / s.R
    m.add("input", "input rows re-read per output row", max(0.0, rows_read - rows_tasks), f_row,
          cin * row_in_c if scattered else 0.0)
    tiles_read = s.N * s.groups * OT * s.Cg * g.VH * tiles_row * tile_in_c / s.R
    m.add("input", "input window re-read per pixel tile", max(0.0, tiles_read - rows_read), f_tile,
          cin * tile_in_c if scattered else 0.0)
    if partial:
        m.add("column", "partial-sum row buffer (first touch)", partial, INF)
        m.add("column", "partial sums re-read per input-channel block",
              s.N * s.groups * OT * s.Ho * s.Wo * vectors * vec * e * (nblk - 1), f_pass)
    m.add("output", "output (first touch)", g.output, INF)
    if s.layout == "nchw":
        # Each tile stores a short run per channel; the next tile of the row
        # continues the same lines one tile's footprint later. The tile's
        # channels are one output plane apart: with a power-of-two plane they
        # share a set, and more of them than ways thrash it.
        touched = s.N * s.K * s.Ho * (interior_tiles * run_bytes(P_eff * e, e) + len(border) * LINE)
        m.add("output", "output lines re-touched by the next pixel tile", max(0.0, touched - g.output), f_tile,
              cin * tile_in_c + acc_tile, alias_stride=s.Ho * s.Wo * e, alias_count=min(s.Kg, vectors * vec))
        if fuse and vec == 16:  # the AVX-512 tiles scatter pixel by pixel
            _scatter_terms(m, s, [P_eff] * interior_tiles, vectors * vec)
    m.add("scratch", "tap tables (and tile buffer) first touch",
          LINE * _ceil_div(4 * s.R * s.S * 8, LINE) + (0 if fuse else LINE * _ceil_div(int(acc_tile), LINE)), INF)
    m.notes.append(f"direct: register tile {vectors}x{vec} channels x {P} pixels; {OT} oc tile(s) x {row_blocks} "
                   f"row block(s); input channels in {nblk} block(s) of {cin} ({wblock / 1024:.1f} KiB of weights); "
                   f"{len(border)} border pixel(s) per row; {'fused' if fuse else 'buffered'} store")
    return m


def _ceil_div(a, b):
    return -((-a) // b)


def depthwise_path(s: ConvSpec, b: dict, isa: str) -> str:
    """Which depthwise.cpp forward runs: "rows" (the AVX2/portable nests), "chan_rows"
    (AVX-512 NHWC pixel x channel-vector tiles), "cblock" (AVX-512 zero-padded
    channel-block tiles: NCHW through 16x16 transposes, narrow NHWC 7x7 planes) or
    "nchw_slide" (AVX-512 NCHW on 16-column row vectors)."""
    if kernel_isa(s, isa) != "avx512":
        return "rows"
    if (s.layout == "nchw" and s.R in (3, 5, 7) and s.stride[0] in (1, 2) and s.dilation[0] == 1
            and s.Wo >= b["depthwise_avx512_nchw_slide_min_width"] * s.stride[1]):
        return "nchw_slide"
    max_s = b["depthwise_avx512_chan_max_s"]
    if s.layout == "nhwc":
        if (s.R * s.S >= b["depthwise_avx512_nhwc_tile_min_taps"] and s.Wo >= 2 * b["depthwise_avx512_pixel_tile"]
                and s.Wo <= b["depthwise_avx512_nhwc_tile_max_width"] and s.S <= max_s):
            return "cblock"
        return "chan_rows" if s.S <= max_s else "rows"
    wide_rows = (tuple(s.stride) == (1, 1) and s.R * s.S <= b["depthwise_avx512_nchw_rows_max_taps"]
                 and s.Wo >= b["depthwise_avx512_nchw_rows_min_width"])
    return "cblock" if s.K == s.C and s.S <= max_s and not wide_rows else "rows"


def model_depthwise_cblock(s: ConvSpec, b: dict) -> Model:
    """forward_cblock_avx512 (cachesim.cpp's run_depthwise_cblock): tasks (n, block of CB
    channels, block of output rows) copy their input rows into a zero-padded
    [row][column][channel] tile, run the channel-vector kernel on it, and (NCHW)
    transpose the output back from a tile buffer."""
    g = Geo(s)
    e, m = g.e, Model("depthwise")
    CB = b["depthwise_avx512_channel_block"]
    Wp = (s.Wo - 1) * s.stride[1] + (s.S - 1) * s.dilation[1] + 1
    halo = (s.R - 1) * s.dilation[0]
    ncb = _ceil_div(s.K, CB)
    budget = max(1, b["depthwise_avx512_tile_bytes"] // (CB * Wp * 4))
    rpt = max(1, min(s.Ho, (budget - halo) // s.stride[0]))
    nrb = _ceil_div(s.Ho, rpt)
    nhwc = s.layout == "nhwc"
    ld = lambda nc: _ceil_div(nc, 16) * 16  # noqa: E731
    ncs = [min(CB, s.K - c0) for c0 in range(0, s.K, CB)]
    rows_in = [(min(s.Ho, (rb + 1) * rpt) - rb * rpt - 1) * s.stride[0] + halo + 1 for rb in range(nrb)]
    rows_img = [max(0, min(s.H, rb * rpt * s.stride[0] - s.padding[0] + r) - max(0, rb * rpt * s.stride[0] - s.padding[0]))
                for rb, r in enumerate(rows_in)]  # input rows inside the image per task
    xbuf = [r * Wp * ld(nc) * e for nc in ncs for r in rows_in]
    ybuf = [0.0] * len(xbuf) if nhwc else [(min(s.Ho, (rb + 1) * rpt) - rb * rpt) * s.Wo * ld(nc) * e
                                          for nc in ncs for rb in range(nrb)]
    tasks = s.N * ncb * nrb
    xb_max, yb_max = max(xbuf), max(ybuf)
    in_task = g.input / (s.N * ncb * nrb)  # about one task's share of the input
    f_task = xb_max + yb_max + in_task + s.K * s.Ho * s.Wo * e / (ncb * nrb)
    m.l1_bytes = {"input": s.N * sum(nc * r * s.W * e for nc in ncs for r in rows_img), "weight": g.weight,
                  "packed_weight": g.weight, "tile": s.N * (sum(xbuf) + 2 * sum(ybuf)), "output": g.output}
    m.add("weight", "weights read once to transpose them", g.weight, INF)
    m.add("packed_weight", "transposed weights (first touch)", g.weight, INF)
    m.add("input", "input (first touch)", g.input, INF)
    m.add("input", "input rows shared by neighbouring row blocks re-read",
          max(0.0, s.N * sum(nc * r * s.W * e for nc in ncs for r in rows_img) - g.input), f_task)
    m.add("tile", "padded input tile (first touch)", xb_max, INF)
    m.add("tile", "padded input tile rewritten per task", s.N * sum(xbuf) - xb_max, f_task)
    # The whole tile is written before the row kernel reads it back in the same order.
    m.add("tile", "padded input tile read back", s.N * sum(xbuf), xb_max)
    if not nhwc:
        m.add("tile", "output tile buffer (first touch)", yb_max, INF)
        m.add("tile", "output tile buffer rewritten per task", s.N * sum(ybuf) - yb_max, f_task)
        m.add("tile", "output tile read back by the transpose", s.N * sum(ybuf), yb_max)
    m.add("output", "output (first touch)", g.output, INF)
    m.notes.append(f"depthwise AVX-512 channel blocks: {tasks} task(s) of {CB} channels x {rpt} output rows; "
                   f"padded tile {xb_max / 1024:.0f} KiB" + ("" if nhwc else f", output tile {yb_max / 1024:.0f} KiB"))
    return m


def model_depthwise_nchw_slide(s: ConvSpec, b: dict) -> Model:
    """forward_nchw_slide_avx512 (cachesim.cpp's run_depthwise_nchw_slide): tasks (n, c,
    block of output rows) copy the block's input rows, padding rows as zeros, into a
    zero-padded phase-split row buffer; register tiles of T output rows x up to NV
    16-column vectors load each buffer row once per kernel column and broadcast one
    weight per FMA."""
    g = Geo(s)
    e, m = g.e, Model("depthwise")
    sh, sw, R, S = s.stride[0], s.stride[1], s.R, s.S
    mult = max(1, s.K // s.C)
    Lq = _ceil_div(_ceil_div(s.Wo, 16) * 16 + (S - 1) * s.dilation[1] // sw, 16) * 16
    row_elems = sw * Lq
    rows = b["depthwise_avx512_nchw_slide_rows"]
    T = 2 * rows if _ceil_div(s.Wo, 16) <= 2 else rows
    rpt = _ceil_div(b["depthwise_avx512_nchw_slide_task_rows"], T) * T
    nrb = _ceil_div(s.Ho, rpt)
    nvmax = b["depthwise_avx512_nchw_slide_width_vecs"]
    nvecs = _ceil_div(s.Wo, 16)  # row vectors per output row, over all chunks
    NB = (T - 1) * sh + R
    buf_rows, img_rows, tiles = 0, 0, 0
    for rb in range(nrb):
        oh0, oh1 = rb * rpt, min(s.Ho, (rb + 1) * rpt)
        nt = _ceil_div(oh1 - oh0, T)
        nb = (nt * T - 1) * sh + R
        ihf = oh0 * sh - s.padding[0]
        buf_rows += nb
        img_rows += max(0, min(s.H, ihf + nb) - max(0, ihf))
        tiles += nt
    # (t, r) pairs of a tile: every output row reads R buffer rows.
    fmas_per_col = T * R
    m.l1_bytes = {
        "input": s.N * s.C * img_rows * s.W * e,
        "column": s.N * s.C * (buf_rows * row_elems * e + mult * tiles * S * NB * nvecs * 16 * e),
        "weight": s.N * s.K * tiles * S * fmas_per_col * nvecs * e,
        "output": g.output,
    }
    buf = (rpt - 1) * sh * row_elems * e + R * row_elems * e
    f_task = buf + mult * rpt * s.Wo * e + min(s.H, rpt * sh + R) * s.W * e
    m.add("output", "output (first touch)", g.output, INF)
    m.add("input", "input (first touch)", g.input, INF)
    m.add("weight", "weights (first touch)", g.weight, INF)
    m.add("column", "row buffer (first touch)", buf, INF)
    m.add("column", "row buffer rewritten per task", s.N * s.C * buf_rows * row_elems * e - buf, f_task)
    m.add("input", "input rows shared by neighbouring row blocks re-read",
          max(0.0, s.N * s.C * img_rows * s.W * e - g.input), f_task)
    m.add("weight", "weights re-read per row block", s.N * s.C * nrb * mult * R * S * e - g.weight, f_task)
    m.notes.append(f"depthwise NCHW (AVX-512 row vectors): tasks of {rpt} output rows of one channel; input rows "
                   f"copied to a padded buffer of {buf / 1024:.1f} KiB; register tiles of {T} rows x up to "
                   f"{nvmax}x16 columns")
    return m


def model_depthwise(s: ConvSpec, b: dict, isa: str = "avx2") -> Model:
    path = depthwise_path(s, b, isa)
    if path == "cblock":
        return model_depthwise_cblock(s, b)
    if path == "nchw_slide":
        return model_depthwise_nchw_slide(s, b)
    g = Geo(s)
    e, m = g.e, Model("depthwise")
    V = b["depthwise_vec_width"]
    mult = max(1, s.K // s.C)
    RS = s.R * s.S
    m.add("output", "output (first touch)", g.output, INF)
    m.add("input", "input (first touch)", g.input, INF)
    if s.layout == "nhwc":
        P, group = b["depthwise_nhwc_pixel_tile"], b["depthwise_nhwc_channel_group"]
        if path == "chan_rows":
            P, group, V = b["depthwise_avx512_pixel_tile"], b["depthwise_avx512_channel_group"], 16
        sw, pl, dw = s.stride[1], s.padding[2], s.dilation[1]
        ow_lo = min(s.Wo, _ceil_div(pl, sw))
        ow_hi = min(s.Wo, max(ow_lo, (s.W - 1 - (s.S - 1) * dw + pl) // sw + 1))
        ntiles = (ow_hi - ow_lo) // P
        border = [ow for ow in range(s.Wo) if not (ow_lo <= ow < ow_lo + ntiles * P)]
        border_taps = sum(g.vw[ow] for ow in border)
        xk = s.N * s.H * s.W * s.K * e  # the kernel's input: x, or x expanded to K channels
        w_all = RS * s.K * e
        per_row = s.N * g.VH  # (n, oh, valid r) triples
        m.l1_bytes = {
            "weight": g.weight,
            "packed_weight": w_all + per_row * (ntiles * s.S + border_taps) * s.K * e,
            "input" if mult == 1 else "column": per_row * (ntiles * P * s.S + border_taps) * s.K * e,
            "output": g.output,
        }
        if path == "chan_rows":  # every tile is P pixels; masked-off taps read nothing
            m.l1_bytes["packed_weight"] = w_all + per_row * _ceil_div(s.Wo, P) * s.S * s.K * e
            m.l1_bytes["input" if mult == 1 else "column"] = s.N * g.VH * g.VW * s.K * e
        xname = "input"
        if mult > 1:
            m.l1_bytes["input"] = g.input
            m.l1_bytes["column"] = m.l1_bytes.get("column", 0) + xk
            m.add("column", "input expanded to K channels (first touch)", xk, INF)
            m.add("column", "expanded input read back", xk, xk + g.input)
            xname = "column"
        f_row = w_all + s.R * s.W * s.K * e + s.Wo * s.K * e
        scattered = s.R * s.W * s.K * e if s.K > group else 0.0  # per-group slices of each pixel
        m.add("weight", "weights read once to repack them", g.weight, INF)
        m.add("packed_weight", "repacked weights (first touch)", w_all, INF)
        m.add("packed_weight", "repacked weights first read", w_all, w_all + g.weight)
        m.add("packed_weight", "weights re-read per output row", (s.N * s.Ho - 1) * w_all, f_row)
        rows = s.N * g.VH * s.W * s.K * e
        m.add(xname, "input rows re-read per output row", rows - xk, f_row, scattered)
        vecs = b["depthwise_avx512_chan_vecs"] if path == "chan_rows" else b["depthwise_nhwc_chan_vecs"]
        m.notes.append(f"depthwise NHWC{' (AVX-512)' if path == 'chan_rows' else ''}: tiles of {P} pixels x "
                       f"{vecs}x{V} channels, tasks of one output row x {group} channels")
    else:
        row_tile, wv = b["depthwise_row_tile"], b["depthwise_nchw_width_vecs"]
        sw = s.stride[1]
        Lq = _ceil_div(s.Wo, V) * V + (s.S - 1) * s.dilation[1] // sw
        row_elems = sw * Lq
        nrb = _ceil_div(s.Ho, row_tile)
        rows_copied = 0
        for rb in range(nrb):
            oh0, oh1 = rb * row_tile, min(s.Ho, (rb + 1) * row_tile)
            lo = max(0, oh0 * s.stride[0] - s.padding[0])
            hi = min(s.H, (oh1 - 1) * s.stride[0] - s.padding[0] + (s.R - 1) * s.dilation[0] + 1)
            rows_copied += max(0, hi - lo)
        buf = (min(s.H, (row_tile - 1) * s.stride[0] + (s.R - 1) * s.dilation[0] + 1)) * row_elems * e
        nblk, ntail = s.Wo // (V * wv), _ceil_div(s.Wo % (V * wv), V)
        taps = s.N * s.K * g.VH * s.S  # (n, k, oh, valid r, s)
        m.l1_bytes = {
            "input": s.N * s.C * rows_copied * s.W * e,  # approximately: the in-image part of each row
            "column": s.N * s.C * rows_copied * row_elems * e + taps * ((nblk * wv + ntail) * V * e),
            "weight": taps * e,
            "scratch": taps * (nblk + ntail) * e,  # tap weights, broadcast from a small array
            "output": g.output,
        }
        m.add("scratch", "tap weights array (first touch)", LINE, INF)
        out_block = mult * row_tile * s.Wo * e
        f_task = buf + out_block + min(s.H, row_tile * s.stride[0] + s.R) * s.W * e
        m.add("weight", "weights (first touch)", g.weight, INF)
        m.add("column", "row buffer (first touch)", buf, INF)
        m.add("column", "row buffer rewritten per task", s.N * s.C * rows_copied * row_elems * e - buf, f_task)
        m.add("input", "input rows shared by neighbouring row blocks re-read",
              s.N * s.C * (rows_copied - s.H) * s.W * e, f_task)
        m.add("weight", "weights re-read per row block", s.N * s.C * nrb * mult * RS * e - g.weight, f_task)
        m.notes.append(f"depthwise NCHW: tasks of {row_tile} output rows of one channel; input rows copied to "
                       f"a padded buffer of {buf / 1024:.1f} KiB; {wv}x{V} outputs per register tile")
    return m


CPU_MODELS = {
    "reference": model_reference,
    "im2col": model_im2col,
    "direct": model_direct,
    "depthwise": model_depthwise,
}


def model(algo: str, spec: ConvSpec, b: dict | None = None, isa: str | None = None) -> Model:
    """The cache model of `algo` on `spec` with blocking constants `b` (default: the
    kernels'), following the loop nest the kernels run on `isa` (default: the ISA they
    use now, fastconv._C.cpu_isa())."""
    if b is None:
        b = blocking()
    if algo not in CPU_MODELS:
        raise ValueError(f"no CPU cache model for algo {algo!r}; have {', '.join(CPU_MODELS)}")
    return CPU_MODELS[algo](spec, b, current_isa(isa))


def level_configs(levels) -> dict:
    """{name: (size, ways, line)} of machine.CacheLevel objects, for bytes_per_level."""
    return {lv.name: (lv.size, lv.ways, lv.line) for lv in levels}


def cpu_cost_model(algo: str):
    """The registry's cost_model for a CPU algorithm: spec -> {level: bytes}."""
    def cost(spec: ConvSpec) -> dict:
        from .machine import cache_levels

        return model(algo, spec).bytes_per_level(level_configs(cache_levels()))

    cost.__name__ = f"{algo}_cost_model"
    return cost


# GPU: what L2 serves to the SMs and what HBM sees, from the kernel's output tile.
# The tile is the one the kernel launches (benchmarks/ncu_bytes.py passes the tuned
# config); without one, the first entry of the kernel's config list (its default).
# Validated against Nsight Compute counters in docs/cache-validation.md.
GPU_DEFAULT_TILES = {
    "triton_igemm": dict(BLOCK_M=128, BLOCK_N=128),
    "triton_depthwise_nchw": dict(BLOCK_H=8, BLOCK_W=64, BLOCK_C=1),
    "triton_depthwise_nhwc": dict(BLOCK_H=4, BLOCK_W=8, BLOCK_C=64),
}
SECTOR = 32  # bytes: the L1 <-> L2 transfer unit


def _halo_rows(block: int, out: int, stride: int, dilation: int, kernel: int, size: int) -> float:
    """Input rows (or columns) one tile of `block` outputs reads, per output row, averaged
    over the tiles that cover `out` outputs (the last tile is partial)."""
    tiles = math.ceil(out / block)
    span = min((block - 1) * stride + (kernel - 1) * dilation + 1, size)
    return tiles * span / out


def gpu_cost_model(spec: ConvSpec, l2_bytes: int, tile: dict | None = None) -> dict:
    """Bytes per level on the GPU: "L2" = L1 misses served by L2 (reads + writes),
    "HBM" = compulsory reads + the output write (+ re-reads when the operand that
    is re-read does not fit in L2), with "HBM_read"/"HBM_write" split out.

    Implicit GEMM with BM x BN output tiles: the gathered input (M x K per group) is
    read once per column of tiles (ceil(Kg / BN)), the weight once per row of tiles
    (ceil(M / BM)), the output written once. Depthwise with BH x BW x BC tiles: each
    tile reads its input window once (the R*S taps reuse it from L1); NCHW rows are
    rounded out to 32-byte sectors.
    """
    e = spec.element_size
    inp = spec.N * spec.C * spec.H * spec.W * e
    wgt = spec.K * spec.Cg * spec.R * spec.S * e + (spec.K * e if spec.bias else 0)
    out = spec.N * spec.K * spec.Ho * spec.Wo * e
    if spec.is_depthwise:
        name = f"triton_depthwise_{spec.layout}"
        t = dict(GPU_DEFAULT_TILES[name], **(tile or {}))
        if "ROWS" in t:  # the row-reuse kernel: ROWS output rows per program
            t["BLOCK_H"] = t["ROWS"]
        rows = _halo_rows(t["BLOCK_H"], spec.Ho, spec.stride[0], spec.dilation[0], spec.R, spec.H + spec.padding[0] + spec.padding[1])
        cols = _halo_rows(t["BLOCK_W"], spec.Wo, spec.stride[1], spec.dilation[1], spec.S, spec.W + spec.padding[2] + spec.padding[3])
        window = spec.N * spec.K * spec.Ho * spec.Wo * rows * cols * e  # per output channel
        if spec.layout == "nchw":  # a row segment spans one more sector when misaligned
            seg = t["BLOCK_W"] * spec.stride[1] * e
            window *= (math.ceil(seg / SECTOR) + 1) / max(seg / SECTOR, 1)
        read_l2 = window / spec.channel_multiplier
        l2 = read_l2 + out + wgt * math.ceil(spec.N * spec.Ho * spec.Wo / (t["BLOCK_H"] * t["BLOCK_W"]))
        reread = 0.0
    else:
        t = dict(GPU_DEFAULT_TILES["triton_igemm"], **(tile or {}))
        M, N, K = spec.gemm_shape
        col_tiles, row_tiles = math.ceil(N / t["BLOCK_N"]), math.ceil(M / t["BLOCK_M"])
        gathered = M * K * e * spec.groups  # the implicit im2col matrix
        l2 = gathered * col_tiles + wgt * row_tiles + out
        # HBM re-reads the input per column of tiles only when it cannot stay in L2.
        reread = inp * (col_tiles - 1) if inp + wgt + out > l2_bytes else 0.0
    read = inp + wgt + reread
    return {"L2": float(l2), "HBM": float(read + out), "HBM_read": float(read), "HBM_write": float(out)}
