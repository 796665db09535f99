#!/usr/bin/env bash
# Head activation patterns after non-instructional vs instruction fine-tuning (docs/noninstructional.md, "Beyond
# the paper"). Needs the runs of scripts/noninstr/run.sh (pairs-gold, instr-equal.jsonl, sft-<c>-s0/final).
# Idempotent: finished patterns are skipped. A model name C means sft-C-s0, C-sK the seed-K run (MODELS="base
# teacher instr teacher-s1 instr-s1" adds a seed-to-seed reference).
#   bash scripts/noninstr/heads.sh      # from the repository root; PY overrides the interpreter
set -euo pipefail
PY=${PY:-python}
R=runs/noninstr
H=$R/heads
N=${N:-32}
MODELS=${MODELS:-"base teacher gold instr"}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# held-out probes: prose pairs from passages no condition trained on, Alpaca records not in condition (3)'s data
[ -f $H/prose-s1/pairs.jsonl ] || { log "synth held-out prose"
  $PY -m tunelens.cli.main synth configs/noninstr-synth-gold.yaml --out $H/prose-s1 seed=1 max_pairs=48; }
[ -f $H/probe-instr.jsonl ] || { log "probe sets"
  $PY scripts/noninstr/heads_probes.py --prose $H/prose-s1/pairs.jsonl --train-pairs $R/pairs-gold/pairs.jsonl \
      --train-instr $R/instr-equal.jsonl --instructions ../shared/data/instructions/alpaca_en_demo_llamafactory.json \
      --model gemma3-270m --n "$N" --max-length 192 --seed 0 --out $H; }

for m in $MODELS; do
  case $m in base) model=gemma3-270m ;; *-s[0-9]*) model=$R/sft-$m/final ;; *) model=$R/sft-$m-s0/final ;; esac
  for probe in prose instr; do
    out=$H/ap-$m-$probe
    [ -f $out/patterns.json ] && continue
    log "patterns $m $probe"
    $PY -m tunelens.cli.main heads patterns --model "$model" --data $H/probe-$probe.jsonl --out $out \
        --batch-size 4 --max-length 192
  done
done
log "compare"
$PY scripts/noninstr/heads_compare.py --root $H --models $MODELS --json $H/compare.json | tee $H/compare.md
for probe in prose instr; do  # the library's own pairwise report, teacher vs instructions
  $PY -m tunelens.cli.main heads compare $H/ap-teacher-$probe $H/ap-instr-$probe --k 5,10,20 \
      --json $H/compare-teacher-instr-$probe.json --plot $H/ap-teacher-vs-instr-$probe.png
done
log "heads done"
