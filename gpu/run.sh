#!/usr/bin/env bash
# The GPU run, in the repo root on the device machine (see gpu/README.md for the order of calls):
#   bash gpu/run.sh stage   rejoin the carried parts, check sha256 against the manifest, pip-install
#                           into /tmp/mw-site (with the last batch; idempotent)
#   bash gpu/run.sh 1       stage (a no-op once installed), then gpu/measure.py 1: verify in every
#                           precision + the TF32 probe, in parallel processes (< 300 s)
#   bash gpu/run.sh 2       stage, then gpu/measure.py 2: parity float32 (12 shards) + the pipeline's
#                           graphs, then the encoder benchmark, then the pipeline timing (< 300 s)
# Results land in $OUT as they come (measure.py: summary.json first, each shard's JSON when it has
# one); run.log holds everything, nvidia-smi and versions included. MW_ONLY=stage = `stage`.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/mw-out}
STAGE=${MW_STAGE:-/tmp/mw-stage}
SITE=${MW_SITE:-/tmp/mw-site}
PY=${MW_PYTHON:-python3}
WHAT=${1:-${MW_ONLY:-}}
export MW_STAGE=$STAGE MW_SITE=$SITE PYTHONUNBUFFERED=1 OUT
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
# ../shared/speech does not travel: the measuring calls carry gpu/stage/speech (stage.py speech)
[ -f gpu/stage/speech/transcripts.tsv ] && export MAXWHISPER_SPEECH_DIR=$ROOT/gpu/stage/speech
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1

echo "=== run.sh $WHAT $(date -u +%FT%TZ) root=$ROOT out=$OUT stage=$STAGE site=$SITE py=$(command -v "$PY")"
t=$(date +%s)
timeout -k 10 150 "$PY" gpu/offline_bundle/rejoin.py install --site "$SITE" --python "$PY"; rc=$?
echo "=== stage: rc=$rc wall=$(( $(date +%s) - t ))s"
printf '{"step": "stage", "rc": %s, "wall_s": %s}\n' "$rc" "$(( $(date +%s) - t ))" >"$OUT/stage.json"
case "$WHAT" in
  stage)
    timeout 20 nvidia-smi || echo "nvidia-smi: unavailable"
    "$PY" -VV
    exit "$rc" ;;
  1|2)
    rm -f "$OUT/stage.json"  # the 8-file limit: the stage's line is in run.log
    (( rc == 0 )) || exit "$rc"
    exec "$PY" gpu/measure.py "$WHAT" --device "${MW_DEVICE:-gpu}" --out "$OUT" ;;
  *)
    echo "usage: bash gpu/run.sh stage|1|2"; exit 2 ;;
esac
