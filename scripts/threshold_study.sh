#!/usr/bin/env bash
# Threshold decoding on a longer-trained model: NFE per token against generative perplexity
# (the sampling issue's target: <= 0.5 NFE/token within 10 % of first-hitting's gen-PPL).
# Needs a finished scripts/reproduce.sh run (its corpus, tokenizer and AR judge).
#   1. trains a BD3-LM with B' = 16 (the reproduce shape: L 128, 4 layers, hidden 256) with
#      a constant learning rate 1e-3 for a wall-time budget (a rerun after an interruption
#      resumes from the checkpoint with a fresh budget; OUT/trained marks it done);
#   2. samples 32 sequences of 128 tokens per seed with first-hitting, with each tau, and
#      with each (tau, min-reveal k) of REVEAL_TAUS x MIN_REVEALS (at least k tokens per
#      call, most confident first: at most 1/k NFE per token);
#   3. scores every file with `bd3 eval-gen` under the reproduce AR judge;
#   4. writes summary.json (scripts/threshold_study.py) and prints its table.
# Usage: scripts/threshold_study.sh [out-dir]   (default out/threshold)
# Environment: REPRODUCE (default out/reproduce), BD3 (default build/release/bd3),
#   TRAIN_SECONDS (default 2400), SEEDS (default "1 2 3 4"), TAUS, REVEAL_TAUS (default
#   "1 0.9 0.7 0.5"), MIN_REVEALS (default "2 3 4"), THREADS (default nproc), MODEL (a
#   trained checkpoint to study instead of training one, e.g. out/threshold/bd3-16),
#   SAMPLE_FLAGS (added to every `bd3 sample`, e.g. "--top-p 0.9").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/out/threshold}
rep=${REPRODUCE:-$root/out/reproduce}
bd3=${BD3:-$root/build/release/bd3}
train_seconds=${TRAIN_SECONDS:-2400}
seeds=${SEEDS:-1 2 3 4}
taus=${TAUS:-0.9 0.7 0.5 0.3 0.2 0.1 0.05 0}
reveal_taus=${REVEAL_TAUS:-1 0.9 0.7 0.5}
min_reveals=${MIN_REVEALS:-2 3 4}
threads=${THREADS:-$(nproc)}
for f in "$rep/kjv.txt" "$rep/tokenizer/vocab.json" "$rep/models/ar/checkpoint.json"; do
  [ -e "$f" ] || { echo "threshold_study: $f is missing: run scripts/reproduce.sh first" >&2; exit 1; }
done
mkdir -p "$out/gen"
model=${MODEL:-$out/bd3-16}
read -r -a sample_flags <<<"${SAMPLE_FLAGS:-}"

if [ -z "${MODEL:-}" ] && { [ ! -f "$model/checkpoint.json" ] || [ ! -f "$out/trained" ]; }; then
  resume=()
  [ -f "$model/checkpoint.json" ] && resume=(--resume)
  "$bd3" train --data "$rep/kjv.txt" --tokenizer "$rep/tokenizer" --block-size 16 --length 128 \
    --layers 4 --hidden 256 --heads 4 --cond 128 --batch 16 --steps 4000 --lr 1e-3 --warmup 100 \
    --seed 1 --threads "$threads" --checkpoint-every 500 --max-seconds "$train_seconds" \
    --quiet --out "$model" "${resume[@]}"
  touch "$out/trained"
fi
if [ ! -s "$out/eval.json" ]; then
  # As reproduce.sh evaluates its models (same sequences, draws and seed), to compare.
  "$bd3" eval --model "$model" --data "$rep/kjv.txt" --split validation --samples 4 \
    --seed 1 --threads "$threads" --quiet >"$out/eval.json.tmp"
  mv "$out/eval.json.tmp" "$out/eval.json"
fi

# gen TAG SEED FLAGS...: 32 samples of 128 tokens, then their score under the AR judge.
gen() {
  local tag=$1 seed=$2
  shift 2
  local file=$out/gen/$tag.seed$seed
  if [ ! -s "$file.score.json" ]; then
    "$bd3" sample --model "$model" --length 128 --batch 32 --seed "$seed" --threads "$threads" \
      --json "${sample_flags[@]}" "$@" >"$file.jsonl.tmp"
    mv "$file.jsonl.tmp" "$file.jsonl"
    "$bd3" eval-gen --judge "$rep/models/ar" --samples "$file.jsonl" --threads "$threads" \
      >"$file.score.json.tmp"
    mv "$file.score.json.tmp" "$file.score.json"
  fi
}
for seed in $seeds; do
  echo "seed $seed" >&2
  gen fh "$seed" --first-hitting
  for tau in $taus; do gen "tau$tau" "$seed" --threshold "$tau"; done
  for tau in $reveal_taus; do
    for k in $min_reveals; do gen "tau${tau}k$k" "$seed" --threshold "$tau" --min-reveal "$k"; done
  done
done
python3 "$root/scripts/threshold_study.py" "$out"
