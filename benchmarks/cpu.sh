#!/usr/bin/env bash
# Re-run the committed CPU benchmark results in one command (from the repository root):
#   benchmarks/cpu.sh [machine-name]        default name: cpu-xeon-2c
# Writes benchmarks/results/<name>/quick (every suite's --quick subset) and .../full (the whole
# ResNet-50 and MobileNetV2 tables at batch 1, conv_vs_linear at batch 1 and 64).
# THREADS=1 by default: on a shared 2-core machine two OpenMP threads collapse (benchmarks/README.md).
set -euo pipefail
NAME="${1:-cpu-xeon-2c}"
THREADS="${THREADS:-1}"
FASTCONV="${FASTCONV:-.venv/bin/fastconv}"
OUT="benchmarks/results/${NAME}"
"$FASTCONV" bench --device cpu --quick --threads "$THREADS" --out "$OUT/quick"
"$FASTCONV" bench --device cpu --suite resnet50 mobilenetv2 conv_vs_linear --threads "$THREADS" \
    --repeats 3 --out "$OUT/full"
