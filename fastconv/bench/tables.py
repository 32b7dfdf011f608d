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


# -- the names people know: torchvision module paths and the papers' stage names ----------------
# Geometry of each torchvision module path: (C, H, W, K, R, S, stride, groups) at 224x224.
def _resnet_paths(groups: int = 1, width_per_group: int = 64, blocks=(3, 4, 6, 3)) -> dict:
    """torchvision.models.resnet's Bottleneck networks (ResNet-50, ResNeXt-50 32x4d)."""
    out = {"conv1": (3, 224, 224, 64, 7, 7, 2, 1)}
    inplanes, hw = 64, 56
    for i, n in enumerate(blocks):
        planes = 64 << i
        width = planes * width_per_group // 64 * groups
        for j in range(n):
            s = (1 if i == 0 else 2) if j == 0 else 1
            p = f"layer{i + 1}.{j}"
            out[f"{p}.conv1"] = (inplanes, hw, hw, width, 1, 1, 1, 1)
            out[f"{p}.conv2"] = (width, hw, hw, width, 3, 3, s, groups)
            if j == 0:
                out[f"{p}.downsample.0"] = (inplanes, hw, hw, planes * 4, 1, 1, s, 1)
            hw //= s
            out[f"{p}.conv3"] = (width, hw, hw, planes * 4, 1, 1, 1, 1)
            inplanes = planes * 4
    return out


def _mobilenetv2_paths() -> dict:
    """torchvision.models.mobilenet_v2 (width 1.0): features.<i>... module paths."""
    out = {"features.0.0": (3, 224, 224, 32, 3, 3, 2, 1)}
    cin, hw, i = 32, 112, 1
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for j in range(n):
            st = s if j == 0 else 1
            hidden, k = cin * t, 0
            if t != 1:
                out[f"features.{i}.conv.0.0"] = (cin, hw, hw, hidden, 1, 1, 1, 1)
                k = 1
            out[f"features.{i}.conv.{k}.0"] = (hidden, hw, hw, hidden, 3, 3, st, hidden)
            hw //= st
            out[f"features.{i}.conv.{k + 1}"] = (hidden, hw, hw, c, 1, 1, 1, 1)
            cin, i = c, i + 1
    out[f"features.{i}.0"] = (cin, hw, hw, 1280, 1, 1, 1, 1)
    return out


def _convnext_t_paths() -> dict:
    """torchvision.models.convnext_tiny: features.<stage>.<block>.block.{0,3,5} (3 and 5 are
    nn.Linear layers there, the equivalent 1x1 convs here) and the downsampling convs."""
    out = {"features.0.0": (3, 224, 224, 96, 4, 4, 4, 1)}
    dims, depths, hw = (96, 192, 384, 768), (3, 3, 9, 3), 56
    for st, (d, n) in enumerate(zip(dims, depths)):
        if st:
            out[f"features.{2 * st}.1"] = (dims[st - 1], hw * 2, hw * 2, d, 2, 2, 2, 1)
        for j in range(n):
            p = f"features.{2 * st + 1}.{j}.block"
            out[f"{p}.0"] = (d, hw, hw, d, 7, 7, 1, d)
            out[f"{p}.3"] = (d, hw, hw, 4 * d, 1, 1, 1, 1)
            out[f"{p}.5"] = (4 * d, hw, hw, d, 1, 1, 1, 1)
        hw //= 2
    return out


_PATHS = {"resnet50": _resnet_paths, "resnext": lambda: _resnet_paths(32, 4),
          "mobilenetv2": _mobilenetv2_paths, "convnext_t": _convnext_t_paths}
# He et al. 2016 Table 1's stage names: conv1 is the stem; convN_x names the stage's
# stride-1 3x3 conv (in torchvision: layer<N-1>.1.conv2).
_STAGES = {"resnet50": True, "resnext": True}


def _geometry_key(layer: Layer) -> tuple:
    s = layer.spec
    return (s.C, s.H, s.W, s.K, s.R, s.S, s.stride[0], s.groups)


def aliases(suite: str) -> dict[str, str]:
    """Other names for the suite's layers -> the table's row name: torchvision's module paths
    (`layer1.0.conv2`, `features.3.conv.1.0`) and, for ResNets, the stage names of the paper
    (`conv1`, `conv2_x` ... `conv5_x`)."""
    by_geometry = {}
    for layer in load(suite):
        by_geometry.setdefault(_geometry_key(layer), layer.name)
    out = {}
    paths = _PATHS.get(suite, dict)()
    for path, geo in paths.items():
        if geo in by_geometry:
            out[path] = by_geometry[geo]
    if _STAGES.get(suite):
        for n in range(2, 6):
            path = f"layer{n - 1}.1.conv2"
            if path in out:
                out[f"conv{n}_x"] = out[path]
    return out


def find(suite: str, name: str) -> Layer:
    """The layer called `name` in `suite`: a table row name or one of its aliases. ValueError
    listing every valid name otherwise."""
    layers = load(suite)
    by_name = {layer.name: layer for layer in layers}
    if name in by_name:
        return by_name[name]
    al = aliases(suite)
    if name in al:
        return by_name[al[name]]
    stage_names = [a for a in al if "." not in a]
    paths = [a for a in al if "." in a]
    msg = (f"no layer {name!r} in suite {suite!r}. Table names: {', '.join(by_name)}")
    if stage_names:
        msg += f". Stage names: {', '.join(stage_names)}"
    if paths:
        msg += (f". torchvision module paths ({len(paths)}, e.g. {', '.join(paths[:4])}): "
                + ", ".join(paths))
    raise ValueError(msg)
