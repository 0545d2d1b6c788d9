#!/usr/bin/env bash
# The GPU acceptance job (experiments/gpu_acceptance.py says what it runs, in which order, and what it writes),
# for a batch machine whose Python has torch and transformers but can install nothing from the network.
#
#   WHEELS=.whl OUT=/job/output bash experiments/gpu_acceptance.sh --tokenizer TOKENIZER_DIR \
#       --wikitext-dir DATA_DIR --cache-from CACHE_DIR --limit-s 540
#
# WHEELS: a folder of wheels carried with the job (transformers, hydra-core, omegaconf, lm-eval, datasets...),
# installed into a private folder first. At toy size on a CPU (the tests run this, so it cannot rot):
#
#   PYTHON=.venv/bin/python bash experiments/gpu_acceptance.sh --size toy --tokenizer .cache/models/smollm2-135m --out /tmp/x
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dlp-site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/dlp-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m experiments.gpu_acceptance "$@"
