#!/usr/bin/env bash
# Driver of the non-instructional fine-tuning reproduction (docs/noninstructional.md). Idempotent: a stage whose
# output exists is skipped, so re-running continues where it stopped. SEEDS="0 1 2" and CONDITIONS pick runs.
#   bash scripts/noninstr/run.sh            # from the repository root; PY overrides the interpreter
# Conditions can run as parallel processes: SKIP_BASE=1 CONDITIONS=gold SEEDS=0 bash scripts/noninstr/run.sh &
set -euo pipefail
PY=${PY:-python}
R=runs/noninstr
SEEDS=${SEEDS:-"0 1 2"}
CONDITIONS=${CONDITIONS:-"gold teacher instr"}
IFEVAL_N=${IFEVAL_N:-12}
NEW_TOKENS=${NEW_TOKENS:-64}
REFLL_N=${REFLL_N:-20}
EVAL="--dtype bfloat16"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

evaluate() {  # $1 model, $2 out dir
  if [ ! -f "$2/refll/results.json" ]; then
    log "eval refll $1"
    $PY -m tunelens.cli.main eval refll --model "$1" --out "$2/refll" --turns first --max-answer-tokens 128 \
        --no-generate --batch-size 2 --limit "$REFLL_N" $EVAL
  fi
  if [ ! -f "$2/ifeval/results.json" ]; then
    log "eval ifeval $1"
    $PY -m tunelens.cli.main eval ifeval --model "$1" --out "$2/ifeval" --limit "$IFEVAL_N" \
        --max-new-tokens "$NEW_TOKENS" --batch-size 12 --stop '### User:' $EVAL
  fi
  log "eval done $1"
}

data() {  # make the training data of condition $1 if missing
  case $1 in
    gold) [ -f $R/pairs-gold/pairs.jsonl ] || { log "synth gold"
            $PY -m tunelens.cli.main synth configs/noninstr-synth-gold.yaml --out $R/pairs-gold; } ;;
    teacher)
      for _ in $(seq 1 "${WAIT_TEACHER_S:-0}"); do [ -f $R/pairs-teacher/pairs.jsonl ] && break; sleep 1; done
      [ -f $R/pairs-teacher/pairs.jsonl ] || { log "synth teacher"
            $PY -m tunelens.cli.main synth configs/noninstr-synth-teacher.yaml --out $R/pairs-teacher; } ;;
    instr) data gold
      [ -f $R/instr-equal.jsonl ] || log "equal-token instructions"
      [ -f $R/instr-equal.jsonl ] || $PY scripts/noninstr/equal_tokens.py --pairs $R/pairs-gold/pairs.jsonl \
          --instructions ../shared/data/instructions/alpaca_en_demo_llamafactory.json \
          --model gemma3-270m --max-length 192 --seed 0 --out $R/instr-equal.jsonl ;;
  esac
}

data gold
[ -n "${SKIP_BASE:-}" ] || evaluate gemma3-270m $R/eval-base
for seed in $SEEDS; do
  for c in $CONDITIONS; do
    run=$R/sft-$c-s$seed
    if [ ! -f $run/final/config.json ]; then
      data $c
      log "sft $c seed $seed"
      $PY -m tunelens.cli.main sft configs/noninstr-sft-$c.yaml --out $run seed=$seed
      log "sft done $c seed $seed"
    fi
    evaluate $run/final $R/eval-$c-s$seed
  done
done
log "all done"
