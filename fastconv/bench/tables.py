"""The layer tables: real networks' conv layers, shipped as CSV files in `tables/`.

Each file starts with `#` lines naming its source (paper and reference code), then one row per
distinct layer: geometry, `count` (how often the layer occurs in the network) and `quick`
(member of the `--quick` subset). An empty N means "take --batch".
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from typing import Optional

import torch

from ..spec import ConvSpec

SUITES = ("resnet50", "mobilenetv2", "convnext_t", "replknet", "resnext", "conv_vs_linear")
COLUMNS = ("name", "N", "C", "H", "W", "K", "R", "S", "stride", "padding", "dilation", "groups",
           "count", "quick")


@dataclass(frozen=True)
class Layer:
    suite: str
    name: str
    spec: ConvSpec
    count: int  # occurrences in the whole network
    quick: bool

    @property
    def label(self) -> str:
        return f"{self.name} N={self.spec.N}"


def _text(suite: str) -> str:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of: {', '.join(SUITES)}, all")
    return resources.files("fastconv.bench").joinpath("tables", f"{suite}.csv").read_text()


def source(suite: str) -> str:
    """The table's leading comment: what the layers are and where they come from."""
    lines = [ln[1:].strip() for ln in _text(suite).splitlines() if ln.startswith("#")]
    return " ".join(lines)


def rows(suite: str) -> list[dict]:
    """The raw CSV rows (strings), comments stripped."""
    body = "\n".join(ln for ln in _text(suite).splitlines() if ln and not ln.startswith("#"))
    reader = csv.DictReader(io.StringIO(body))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"table {suite}.csv has columns {reader.fieldnames}, expected {list(COLUMNS)}")
    return list(reader)


def load(suite: str, *, batch: Optional[int] = None, default_batch: int = 1,
         dtype: torch.dtype = torch.float32, layout: str = "nchw", device: str = "cpu",
         quick: bool = False) -> list[Layer]:
    """The suite's layers as ConvSpecs. `batch` overrides every row's N; rows without N take
    `default_batch`. Rows that become identical after the override are kept once."""
    out, seen = [], set()
    for r in rows(suite):
        if quick and r["quick"] != "1":
            continue
        n = batch if batch is not None else (int(r["N"]) if r["N"] else default_batch)
        s, p, d = int(r["stride"]), int(r["padding"]), int(r["dilation"])
        spec = ConvSpec(n, int(r["C"]), int(r["H"]), int(r["W"]), int(r["K"]), int(r["R"]), int(r["S"]),
                        stride=(s, s), padding=(p, p, p, p), dilation=(d, d), groups=int(r["groups"]),
                        dtype=dtype, layout=layout, device=device)
        key = (r["name"], spec)
        if key in seen:
            continue
        seen.add(key)
        out.append(Layer(suite, r["name"], spec, int(r["count"]), r["quick"] == "1"))
    return out


def expand(suites) -> list[str]:
    """Resolve 'all' and check names, keeping the order given."""
    out: list[str] = []
    for s in suites:
        names = SUITES if s == "all" else (s,)
        for name in names:
            if name not in SUITES:
                raise ValueError(f"unknown suite {name!r}; expected one of: {', '.join(SUITES)}, all")
            if name not in out:
                out.append(name)
    return out
