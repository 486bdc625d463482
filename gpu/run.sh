#!/usr/bin/env bash
# The GPU run: `bash gpu/run.sh` in the repo root on the device machine, once every batch from
# `python3 gpu/stage.py plan` is in /tmp/mw-stage (see gpu/README.md for the order of calls).
#
# Steps, each under its own timeout and all inside MW_BUDGET_S seconds; a failing step does not
# stop the next. Results land in $OUT as they come, so a run cut short still returns what it had
# (the device tool returns at most 8 files): run.log, summary.json, env.json, verify-gpu.json,
# probe16.json, parity-gpu.xml, bench-gpu/bench.json, bench-gpu/bench.png (the 8th folds into extra.tgz).
#   stage   rejoin the parts, check sha256 against the manifest, pip-install into /tmp/mw-site
#   env     imports, torch CUDA, MAX accelerator count, a 4x4 MAX matmul on CPU and GPU
#   probe_tf32  gpu/probe_tf32.py: which float32 products MAX computes in TF32, truncated or rounded (one graph)
#   verify  maxwhisper verify --device gpu (eSpeak NG speech: ../shared/speech does not travel)
#   probe16 gpu/probe16.py: bfloat16/float16 matmul, layer_norm, softmax, gelu, cast in MAX vs torch
#   parity  pytest -k parity --device gpu
#   bench   benchmarks, encoder_tiny_en, --device gpu
# Verify runs first and bench last: if the budget runs out, the timing is what goes missing.
# MW_ONLY=stage runs the stage step alone (`stage.py rehearse` does, on this CPU machine).
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/mw-out}
STAGE=${MW_STAGE:-/tmp/mw-stage}
SITE=${MW_SITE:-/tmp/mw-site}
PY=${MW_PYTHON:-python3}
BUDGET_S=${MW_BUDGET_S:-450}
# Per-step caps (seconds). MAX compiles cold on a fresh machine (a 4x4 CPU matmul took ~100 s
# cold, 3 s warm, on the 2-core CPU machine), and every later step reuses ~/.cache/modular.
CAP_STAGE=${MW_CAP_STAGE:-120} CAP_ENV=${MW_CAP_ENV:-60} CAP_PARITY=${MW_CAP_PARITY:-120}
CAP_VERIFY=${MW_CAP_VERIFY:-150} CAP_BENCH=${MW_CAP_BENCH:-90} CAP_PROBE16=${MW_CAP_PROBE16:-60}
# >>> dtypes for the parity step: looped as `--dtype $d` only once `pytest --help` lists --dtype.
DTYPES="float32"
# <<<
export MW_STAGE=$STAGE MW_SITE=$SITE PYTHONUNBUFFERED=1 OUT
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1

T0=$(date +%s)
STEPS=""
summary() {  # rewritten after every step: a killed run still leaves a valid summary.json
  printf '{"started_epoch": %s, "budget_s": %s, "elapsed_s": %s, "finished": %s, "steps": [%s]}\n' \
    "$T0" "$BUDGET_S" "$(( $(date +%s) - T0 ))" "$1" "$STEPS" >"$OUT/summary.json"
}
step() {  # step NAME CAP_S CMD...: CMD under timeout min(CAP_S, budget left); record rc and wall
  local name=$1 cap=$2; shift 2
  local left=$(( T0 + BUDGET_S - $(date +%s) ))
  local t=$(( cap < left ? cap : left )) rc wall s
  if (( left < 10 )); then
    echo "=== $name: skipped (${left}s of ${BUDGET_S}s left)"
    STEPS+="${STEPS:+, }{\"step\": \"$name\", \"rc\": null, \"skipped\": true}"; summary false
    return
  fi
  echo "=== $name (timeout ${t}s): $*"
  s=$(date +%s.%N)
  # SIGINT first: pytest takes it as a KeyboardInterrupt and still writes its report and junit XML
  timeout -s INT -k 15 "$t" "$@"; rc=$?
  wall=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  (( rc == 124 || rc == 137 || rc == 130 )) && echo "=== $name: TIMED OUT after ${t}s"
  echo "=== $name: rc=$rc wall=${wall}s"
  STEPS+="${STEPS:+, }{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $wall, \"timeout_s\": $t}"
  summary false
}

echo "=== run.sh $(date -u +%FT%TZ) root=$ROOT out=$OUT stage=$STAGE site=$SITE py=$(command -v "$PY")"
summary false
step stage "$CAP_STAGE" "$PY" gpu/rejoin.py install --site "$SITE" --python "$PY"
if [ "${MW_ONLY:-}" = stage ]; then summary true; exit 0; fi

timeout 20 nvidia-smi || echo "nvidia-smi: unavailable"
"$PY" -VV
timeout 30 "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|numpy|triton|numba|tiktoken|click|psutil|rich|typing.extensions|pytest|pytest.benchmark|hypothesis|tqdm) '

step env "$CAP_ENV" "$PY" gpu/env_check.py --need gpu --json "$OUT/env.json"

# Which products are TF32 (precision.TF32_PRODUCTS assumes every Linear and conv matmul): one graph.
step probe_tf32 "$CAP_PROBE16" "$PY" gpu/probe_tf32.py --device gpu --json "$OUT/probe_tf32.json"

# verify first: one traced and one plain encoder graph give every layer's error on the GPU and
# both transcripts; parity then compiles one graph per record and per encoder size (cold: tens of
# seconds each), so a cut-short parity step still leaves verify's table.
step verify "$CAP_VERIFY" "$PY" -m maxwhisper.cli verify --device gpu --json "$OUT/verify-gpu.json"

# 16-bit floats: one MAX graph per dtype; the JSON is rewritten per dtype, so a cut keeps the first.
step probe16 "$CAP_PROBE16" "$PY" gpu/probe16.py --device gpu --json "$OUT/probe16.json" \
  --deadline-s $(( CAP_PROBE16 * 2 / 3 ))

HELP=$(timeout 60 "$PY" -m pytest -p no:cacheprovider --help 2>/dev/null)
grep -qE '^ +--device[ =,]' <<<"$HELP" || echo "WARNING: pytest lists no --device option: GPU steps will fail on it"
if grep -qE '^ +--dtype[ =,]' <<<"$HELP"; then
  for d in $DTYPES; do
    step "parity-$d" "$CAP_PARITY" "$PY" -m pytest -p no:cacheprovider -k parity --device gpu --dtype "$d" -x -q \
      --junitxml="$OUT/parity-gpu-$d.xml"
  done
else
  step parity "$CAP_PARITY" "$PY" -m pytest -p no:cacheprovider -k parity --device gpu -x -q \
    --junitxml="$OUT/parity-gpu.xml"
fi
# GPU rows only (MAX vs PyTorch CUDA, batch 1..16); the CPU rows are the 2-core machine's business
step bench "$CAP_BENCH" "$PY" -m pytest -p no:cacheprovider benchmarks --benchmark-only --device gpu \
  -k "encoder_tiny_en and gpu" --bench-out "$OUT/bench-gpu"

# The device tool returns at most 8 files: fold any overflow into one archive.
mapfile -t rest < <(cd "$OUT" && find . -type f ! -name run.log ! -name summary.json | sort)
if (( ${#rest[@]} > 6 )); then
  extra=("${rest[@]:5}")
  (cd "$OUT" && tar czf extra.tgz "${extra[@]}" && rm -f "${extra[@]}")
  echo "=== more than 8 files: ${extra[*]} folded into extra.tgz"
fi
summary true
echo "=== done in $(( $(date +%s) - T0 ))s: $(cat "$OUT/summary.json")"
