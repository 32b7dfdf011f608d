#!/usr/bin/env bash
# The GPU machine's script, from the repository root: build the extension, run the
# gpu-marked tests, then the benchmarks. Everything lands under $OUT (default ./gpu_out).
# STEPS (default "tests bench kbench models ncu"; also "firststep") picks the steps, in that order:
#   tests   pytest -m gpu (PYTEST_ARGS overrides "-m gpu tests"), then the bad-input and
#           native-launch tests (C++ error paths built with this machine's torch and compiler)
#   bench   fastconv bench --device cuda --suite all  -> $OUT/bench/
#   kbench  benchmarks/triton_vs_cudnn.py (kernels vs cuDNN, CUDA-graph time; KBENCH_ARGS)
#   models  benchmarks/models_gpu.py (converted torchvision models; MODELS_ARGS) -> $OUT/models/
#   ncu     benchmarks/ncu_bytes.py under Nsight Compute (DRAM/L2 bytes vs the model) -> $OUT/ncu/
#   firststep  benchmarks/first_step.py (a converted model's first training step on fresh
#           caches vs cuDNN's; FIRSTSTEP_ARGS, e.g. "--compile-ahead") -> $OUT/firststep/;
#           with FIRSTSTEP_RACE=1 also
#           the races' tiles, exported to $OUT/firststep_race/<gpu>.json for kernels/tiles/
# Timeouts: TEST_TIMEOUT, BENCH_TIMEOUT, KBENCH_TIMEOUT, MODELS_TIMEOUT, NCU_TIMEOUT,
# FIRSTSTEP_TIMEOUT (s).
# The tile cache ($FASTCONV_CACHE_DIR, default $OUT/cache) carries tuned tiles between steps.
set -o pipefail
OUT=${OUT:-$PWD/gpu_out}
STEPS=${STEPS:-tests bench kbench models ncu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export FASTCONV_CACHE_DIR=${FASTCONV_CACHE_DIR:-$OUT/cache}
PY=${PYTHON:-python3}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

# The machine has no package index, and `pip install -e .` asks for an isolated build:
# build the extension in place and map fastconv.kernels onto kernels/ as setup.py does.
MAX_JOBS=16 $PY setup.py -q build_ext --inplace > /tmp/fastconv_build.log 2>&1 || { tail -30 /tmp/fastconv_build.log; exit 1; }
[ -e fastconv/kernels ] || ln -s ../kernels fastconv/kernels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# Correctness first. Tests compile one tile per kernel (FASTCONV_TUNE=heuristic) and run in
# parallel processes (compilation dominates); they share the GPU, which is fine for correctness.
if has tests; then
  FASTCONV_TUNE=heuristic timeout ${TEST_TIMEOUT:-300} $PY -m pytest -q -n ${TEST_PROCS:-12} -p no:cacheprovider \
    --maxfail=30 ${PYTEST_ARGS:--m gpu tests} > "$OUT/gpu_tests.log" 2>&1
  tail -25 "$OUT/gpu_tests.log"
  # The C++ error paths on this machine's torch and compiler: a bad input must raise, and the
  # GPU image's build is not the CPU CI's (a crash here is a crash for that user).
  timeout ${TEST_TIMEOUT:-300} $PY -X faulthandler -m pytest -q -p no:cacheprovider \
    tests/test_bad_input.py tests/test_native_launch.py > "$OUT/error_paths.log" 2>&1
  tail -5 "$OUT/error_paths.log"
fi

if has bench; then
  # tuned tiles, as before the heuristic became fastconv's default (issue 12)
  FASTCONV_TUNE=${FASTCONV_TUNE:-race} timeout ${BENCH_TIMEOUT:-300} $PY -m fastconv bench --device cuda --suite all --out "$OUT/bench" 2>&1 | tail -20
fi

if has kbench; then
  # Compiling every tile candidate dominates a first session: compile them in parallel
  # processes first (FASTCONV_TUNE=compile, nothing timed), so that the timed run below
  # finds them in Triton's on-disk cache.
  NPRE=${PRECOMPILE_PROCS:-12}
  if [ "$NPRE" -gt 0 ]; then
    for i in $(seq 0 $((NPRE - 1))); do
      timeout ${PRECOMPILE_TIMEOUT:-240} $PY benchmarks/triton_vs_cudnn.py --compile-only \
        --shard $i/$NPRE ${KBENCH_ARGS_PRE:-} > /tmp/precompile_$i.log 2>&1 &
    done
    wait
    grep -h "compile-only" /tmp/precompile_*.log | head -5
  fi
  # Our kernels against cuDNN on every suite layer (tunes tiles on first sight of a shape;
  # every candidate's time goes to tune_log.jsonl).
  FASTCONV_TUNE_LOG=${FASTCONV_TUNE_LOG:-$OUT/tune_log.jsonl} timeout ${KBENCH_TIMEOUT:-400} \
    $PY benchmarks/triton_vs_cudnn.py --out "$OUT" ${KBENCH_ARGS:-} 2>&1 | grep -v "^ " | tail -70
fi

if has models; then
  timeout ${MODELS_TIMEOUT:-400} $PY benchmarks/models_gpu.py --out "$OUT/models" ${MODELS_ARGS:-} 2>&1 | tail -40
fi

if has firststep; then
  # Fresh caches per model and side (the script makes them): the first step as a new user
  # sees it, with the tiles shipped in kernels/tiles/ and the heuristic.
  timeout ${FIRSTSTEP_TIMEOUT:-1500} $PY benchmarks/first_step.py --out "$OUT/firststep" \
    ${FIRSTSTEP_ARGS:-} 2>&1 | tee "$OUT/firststep.log" | grep -v "^fastconv: first call" | tail -20
  if [ "${FIRSTSTEP_RACE:-0}" = 1 ]; then
    # The same steps racing every new shape, their winners kept for the shipped tiles.
    timeout ${FIRSTSTEP_TIMEOUT:-1500} $PY benchmarks/first_step.py --tune race \
      --tiles-cache "$OUT/firststep_race/cache" --out "$OUT/firststep_race" ${FIRSTSTEP_ARGS:-} 2>&1 \
      | tee "$OUT/firststep_race.log" | grep -v "^fastconv: first call" | tail -20
    $PY -m fastconv tiles export --from "$OUT/firststep_race/cache/triton_tiles.json" \
      --gpu "$($PY -c "import torch; print(torch.cuda.get_device_name())")" --out "$OUT/firststep_race/"
  fi
fi

if has ncu; then
  mkdir -p "$OUT/ncu"
  timeout ${NCU_TIMEOUT:-200} ncu --clock-control none --profile-from-start off --csv --print-units base \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_srcunit_tex.sum,gpu__time_duration.sum \
    --log-file "$OUT/ncu/ncu_raw.csv" $PY benchmarks/ncu_bytes.py emit --model "$OUT/ncu/model.json" \
    > /tmp/ncu_emit.log 2>&1 || tail -20 /tmp/ncu_emit.log
  $PY benchmarks/ncu_bytes.py report "$OUT/ncu/ncu_raw.csv" "$OUT/ncu/model.json" --out "$OUT/ncu" 2>&1 | tail -25
fi
