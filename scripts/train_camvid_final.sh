#!/usr/bin/env bash
# The built-in model's final run (issue 20): the shipped recipe on CamVid train+val, a fixed
# 32,000-iteration schedule, as a chain of calls of at most ten minutes on a lent GPU that may be
# released between calls. Each call resumes WORK_DIR's newest run state if the machine is still the
# same one, else the portable state the previous call left (STATE_IN/portable_state.pth.part*),
# trains for MINUTES, and puts the log and the portable state (15 MiB parts) in OUT_DIR; the
# schedule's last weights (final_model.pth) too once it is done.
#   DATA=.traindata/camvid STATE_IN=.traindata/state OUT_DIR=$OUT bash scripts/train_camvid_final.sh 9.4
# Options after MINUTES go to model.training.train last, so they override the recipe's (tests use that).
# CONFIG picks another CamVid network for the same run (e.g. deeplabv3plus_r50-d8_camvid-360x480).
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-9.4}
shift || true
WORK_DIR=${WORK_DIR:-/tmp/camvid_final}
mkdir -p "$OUT_DIR" "$WORK_DIR"
RESUME=()
if [ -f "$WORK_DIR/last_checkpoint" ]; then
  RESUME=(--resume)
elif compgen -G "$STATE_IN/portable_state.pth.part*" >/dev/null; then
  cat "$STATE_IN"/portable_state.pth.part* >"$WORK_DIR/portable_in.pth"
  RESUME=(--resume "$WORK_DIR/portable_in.pth")
fi
echo "resume: ${RESUME[*]:-from scratch}"
python -m model.training.train "${CONFIG:-deeplabv3plus_r18-d8_camvid-360x480}" --data "$DATA" \
  --train-split train+val --work-dir "$WORK_DIR" --device cuda --iters 32000 --batch 16 --lr 0.02 --amp bf16 \
  --channels-last --test-scale 480x360 --val-interval 32000 --ckpt-interval 100000 --log-interval 500 \
  --max-minutes "$MINUTES" --portable-state "${RESUME[@]}" "$@" 2>&1 | tr '\r' '\n' | grep -v "it/s"
cp "$WORK_DIR/log.jsonl" "$OUT_DIR/log.jsonl"
split -b 15M -d "$WORK_DIR/portable_state.pth" "$OUT_DIR/portable_state.pth.part"
[ ! -f "$WORK_DIR/final_model.pth" ] || split -b 15M -d "$WORK_DIR/final_model.pth" "$OUT_DIR/final_model.pth.part"
ls -la "$WORK_DIR" "$OUT_DIR"
