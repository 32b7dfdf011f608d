"""`fastconv tiles export`: turn a GPU run's tuned tiles into the file shipped for that GPU.

A race on a GPU (fastconv.settings.tune = "race") writes each shape's winner to
$FASTCONV_CACHE_DIR/triton_tiles.json, keyed by tile list, GPU, triton version and shape.
The tiles shipped with fastconv (fastconv/kernels/tiles/<gpu>.json, read after the user's
own file and before the heuristic) are the same entries for one GPU, keyed without the
triton version: a tile is valid for any triton, only its candidate list (the digest in
the key) must still be the one raced. Entries of tile lists that have changed since are
dropped; where two triton versions raced one shape, the newer one's winner is kept.

    python -m fastconv tiles export --from $FASTCONV_CACHE_DIR/triton_tiles.json \\
        --gpu "NVIDIA H100 80GB HBM3"        # -> fastconv/kernels/tiles/nvidia-h100-80gb-hbm3.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile


def every_tiles() -> dict:
    """Every Tiles of the Triton families' default policies, by name (imports triton)."""
    from .kernels import _plan, depthwise, grouped, igemm

    found = {}
    for module in (igemm, depthwise, grouped):
        for field in dataclasses.fields(module.POLICY):
            value = getattr(module.POLICY, field.name)
            if isinstance(value, _plan.Tiles):
                found[value.name] = value
    return found


def _version(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in v.split("+")[0].split("."))


def export(tuned: dict, gpu: str, shipped: dict | None = None) -> tuple[dict, dict]:
    """(shipped file contents, counts of what was kept and why entries were dropped) for
    `gpu` from a tuner file's entries, merged over an existing shipped file's entries."""
    from .kernels import _plan

    current = every_tiles()
    counts = {"kept": 0, "other gpu": 0, "other schema": 0, "changed tile list": 0}

    def valid(skey, cfg):
        _, name, digest = skey.split("|", 3)[:3]
        tiles = current.get(name)
        return (tiles is not None and tiles.digest == digest
                and cfg in [dict(c) for c in tiles.candidates])

    tiles, versions = {}, {}
    for skey, cfg in (shipped or {}).get("tiles", {}).items():
        if valid(skey, cfg):
            tiles[skey] = cfg
    for key, cfg in sorted(tuned.items()):
        parsed = _plan.split_tuner_key(key)
        if parsed is None:
            counts["other schema"] += 1
            continue
        skey, key_gpu, triton_version = parsed
        if key_gpu != gpu:
            counts["other gpu"] += 1
            continue
        if not valid(skey, cfg):
            counts["changed tile list"] += 1
            continue
        if skey in versions and _version(versions[skey]) > _version(triton_version):
            continue
        tiles[skey], versions[skey] = cfg, triton_version
        counts["kept"] += 1
    made_with = sorted(set(versions.values()) | set((shipped or {}).get("triton", [])),
                       key=_version)
    return {"gpu": gpu, "schema": _plan.TUNER_SCHEMA, "triton": made_with,
            "tiles": dict(sorted(tiles.items()))}, counts


def _export_cmd(args) -> int:
    from .kernels import _plan

    with open(args.source) as f:
        tuned = json.load(f)
    out = args.out or _plan.SHIPPED_DIR
    if os.path.isdir(out) or out.endswith(os.sep):
        out = os.path.join(out, _plan.gpu_slug(args.gpu) + ".json")
    shipped = None
    if not args.replace and os.path.exists(out):
        with open(out) as f:
            shipped = json.load(f)
        if shipped.get("gpu") != args.gpu:
            raise SystemExit(f"fastconv tiles export: {out} holds tiles for "
                             f"{shipped.get('gpu')!r}, not {args.gpu!r} (--replace overwrites it)")
    data, counts = export(tuned, args.gpu, shipped)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, out)
    dropped = ", ".join(f"{n} {why}" for why, n in counts.items() if why != "kept" and n)
    print(f"{out}: {len(data['tiles'])} tiles for {args.gpu} ({counts['kept']} from "
          f"{args.source}{'; dropped ' + dropped if dropped else ''})")
    return 0


def add_parser(sub):
    p = sub.add_parser("tiles", help="shipped Triton tiles", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(dest="tiles_command", required=True)
    e = tsub.add_parser("export", help="a tuner file -> the shipped tiles of one GPU")
    e.add_argument("--from", dest="source", required=True,
                   help="a tuner file ($FASTCONV_CACHE_DIR/triton_tiles.json) written by races")
    e.add_argument("--gpu", required=True,
                   help="the device name as torch.cuda.get_device_name() gives it")
    e.add_argument("--out", default=None,
                   help="a file, or a directory for <gpu slug>.json (default: fastconv/kernels/"
                        "tiles/, the shipped ones); merged into if present")
    e.add_argument("--replace", action="store_true", help="do not merge with an existing file")
    e.set_defaults(func=_export_cmd)
