#!/usr/bin/env bash
# The GPU bench inside a 10-minute limit (a short batch job, a borrowed GPU): the LLaMA-2-7B-shaped bfloat16
# case at 128 x 2048 for the three methods the GPU targets name, without the scaling section (`make bench-gpu`
# runs that too, with no time limit).
#
# It runs on the machine's own python3 and packages (torch, transformers, numpy, tqdm and matplotlib; it
# installs nothing) with this checkout on PYTHONPATH, and writes into $OUT when set (a batch system's
# output folder), else results/: bench-llama2-7b-gpu.{json,md} when the run ends, and
# bench-llama2-7b-gpu.partial.json after every method, so that a run cut short by the time limit keeps what
# it measured (`python -m experiments.bench_report that.partial.json` renders it).
#
#   bash experiments/bench_gpu_quick.sh                   # on the GPU machine
#   bash experiments/bench_gpu_quick.sh --shape tiny --device cpu --nsamples 4 --seqlen 32 \
#        --eval-windows 2 --eval-seqlen 32               # the same path on a CPU, at toy size (later flags win)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${OUT:-results}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# What the run will use, first: a missing package or an unseen GPU shows in the first second, not after a load.
"$PY" -c "import torch, transformers, numpy, tqdm, matplotlib; print('python', __import__('sys').version.split()[0],
'| torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# Seconds of device-only checks (tests/test_gpu.py: TF32 Gram products, Wanda and SparseGPT on the device);
# a failure is reported and the benchmark runs all the same.
timeout 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$DEST/test-gpu.log" \
  || echo "tests/test_gpu.py failed or timed out: see $DEST/test-gpu.log"
# The bench stops itself 560 s after the script began, inside the command's 600 s, leaving time to copy $OUT back.
timeout "$(( ${BENCH_LIMIT_S:-560} - SECONDS ))" "$PY" -m experiments.bench --shape llama2-7b --dtypes bfloat16 --device cuda \
  --nsamples 128 --seqlen 2048 --eval-windows 32 --eval-seqlen 2048 --no-scaling --no-progress \
  --methods uniform+wanda,dlp+wanda,uniform+sparsegpt --out "$DEST/bench-llama2-7b-gpu" "$@" \
  2>&1 | tee "$DEST/bench-llama2-7b-gpu.log"
