"""The README's per-layer table from round1.log and round2.log: before = the pre-branch kernels
("orig", round 1; round 2 for the layer round 1 did not reach), after = the variant of round 2
that the committed NCHW choices (kernels/igemm.py) take for that layer, each with the cuDNN
time of its own run."""
import csv
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = os.path.join(HERE, "..", "..", "..", "..", "fastconv", "bench", "tables", "resnet50.csv")


def parse(path):
    rows, hdr = {}, None
    for line in open(path):
        if line.startswith("layer "):
            hdr = line.split()[3:]
            hdr = hdr[:next(i for i, h in enumerate(hdr) if h.startswith("x("))]
            continue
        parts = line.split()
        if hdr is None or len(parts) < 3 + len(hdr) or parts[2] not in ("fwd", "gi", "gw"):
            continue
        vals = {}
        for h, v in zip(hdr, parts[3:3 + len(hdr)]):
            try:
                vals[h] = float(v)
            except ValueError:
                pass
        rows[(parts[0], parts[2])] = (int(parts[1]), vals)
    return rows


def layers():
    body = [ln for ln in open(TABLE) if not ln.startswith("#")]
    out = {}
    for r in csv.DictReader(body):
        name = r["name"].replace("layer", "l").replace("downsample", "ds")
        ho = (int(r["H"]) + 2 * int(r["padding"]) - int(r["R"])) // int(r["stride"]) + 1
        out[name] = (int(r["C"]), int(r["R"]), ho)
    return out


def choice(d, c, r, ho):
    """(round-2 variant, path) the committed choices take (igemm.NCHW_* constants)."""
    kind = "gather" if c % 16 else ("1x1" if r == 1 else "kxk")
    if d == "fwd":
        if kind == "gather":
            return "w", "PIX_MAJOR + weight copy"
        if kind == "1x1":
            return "new", "unchanged"
        return ("new", "channels_last detour") if ho * ho <= 49 else ("w", "weight copy")
    if d == "gi":
        if kind == "kxk" and ho * ho <= 196:
            return "cl", "channels_last detour, k-major weight"
        return "w", "weight copy (k-major)"
    return ("w", "tap-blocked") if kind != "gather" else ("w", "gather (unchanged)")


def main():
    r1, r2 = parse(os.path.join(HERE, "round1.log")), parse(os.path.join(HERE, "round2.log"))
    info = layers()
    print("| layer | n | dir | before us (x cuDNN) | after us (x cuDNN) | after/before | after: path |")
    print("|---|---:|---|---:|---:|---:|---|")
    tot = {}
    for (name, d), (cnt, v2) in r2.items():
        v1 = r1.get((name, d), (cnt, {}))[1]
        src = v1 if "orig" in v1 else v2
        before, cu_b = src.get("orig"), src.get("cudnn")
        var, path = choice(d, *info[name])
        after, cu_a = v2.get(var), v2.get("cudnn")
        if None in (before, cu_b, after, cu_a):
            continue
        print(f"| {name} | {cnt} | {d} | {before:.1f} ({cu_b / before:.2f}) | {after:.1f} "
              f"({cu_a / after:.2f}) | {after / before:.2f} | {path} |")
        for key in (d, "all"):
            t = tot.setdefault(key, [0.0] * 4)
            for i, v in enumerate((before, cu_b, after, cu_a)):
                t[i] += cnt * v
    print("\n| direction | before us | cuDNN us (run 1) | x | after us | cuDNN us (run 2) | x |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key in ("fwd", "gi", "gw", "all"):
        b, cb, a, ca = tot[key]
        print(f"| {key} | {b:.0f} | {cb:.0f} | {cb / b:.2f} | {a:.0f} | {ca:.0f} | {ca / a:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
