#!/usr/bin/env bash
# Reproduces the paper's findings at small scale on the default corpus (King James Bible):
# trains AR (block size 1, full masking), BD3-LMs with block sizes 4, 8 and 16, MDLM
# (block size = length) and, for block sizes 4 and 16, a second model with the
# data-driven clipped schedule, all with the same model size and token budget; then
# evaluates likelihood, noise-schedule variance, zero-shot likelihood on The Devil's
# Dictionary (Debian dict-devil), generation quality against NFE, and sampler speed, and
# writes docs/results.md with PNG plots (docs/results/); B'=4 and 16 are trained with a second
# seed to measure the spread of training itself. About 90 minutes on 2 cores.
#
# Usage: scripts/reproduce.sh [output-dir]        (default: out/reproduce)
# Environment: BD3_REPRO_STEPS (optimizer steps per model, default 400), BD3_REPRO_THREADS
#              (default: all cores), BD3_REPRO_DOCS (where results.md goes, default docs/),
#              BD3_REPRO_BIN (a bd3 program to use instead of building one),
#              BD3_REPRO_EVAL_SEQUENCES (evaluate at most this many sequences; 0 = all: a smoke test).
# Finished steps are kept: running it again resumes where it stopped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/out/reproduce}
docs=${BD3_REPRO_DOCS:-$root/docs}
steps=${BD3_REPRO_STEPS:-400}
build=$root/build/release
threads=${BD3_REPRO_THREADS:-$(nproc)}
seed=1
eval_sequences=${BD3_REPRO_EVAL_SEQUENCES:-0}
step() { printf '\n== %s\n' "$*" >&2; }
start=$(date +%s)
mkdir -p "$out/logs" "$out/eval" "$out/gen" "$out/speed"
log=$out/commands.log
# run: logs the command line (for the results' "how it was made"), then runs it.
run() {
  printf '%s\n' "$*" | sed "s|$bd3|bd3|g; s|$out/||g" >>"$log"
  "$@"
}

step "1/9 Debian packages and build"
"$root/scripts/deps.sh" dict-devil gnuplot-nox python3 jq
if [ -n "${BD3_REPRO_BIN:-}" ]; then
  bd3=$BD3_REPRO_BIN
else
  # clang unless CXX says otherwise, as scripts/test.sh.
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_COMPILER="${CXX:-clang++}" >/dev/null
  cmake --build "$build" --target bd3_cli -j "$threads"
  bd3=$build/bd3
fi

step "2/9 corpora: King James Bible (training) and The Devil's Dictionary (zero-shot)"
corpus=$out/kjv.txt
"$root/scripts/get_corpus.sh" "$corpus"
zeroshot=$out/devil.txt
if [ ! -s "$zeroshot" ]; then
  # The dictd file; its first entries (00-database-*) are metadata, not Bierce's text.
  zcat /usr/share/dictd/devil.dict.dz | awk '/^ABASEMENT, n\./ { on = 1 } on' >"$zeroshot.tmp"
  mv "$zeroshot.tmp" "$zeroshot"
fi
echo "kjv: $(wc -c <"$corpus") bytes; devil: $(wc -c <"$zeroshot") bytes" >&2

step "3/9 BPE tokenizer (4096 tokens) trained on the training corpus"
[ -s "$out/tokenizer/merges.txt" ] || run "$bd3" tokenizer train --data "$corpus" --vocab-size 4096 --out "$out/tokenizer"

# name block-size extra-flags: the models. AR is block size 1 with every token masked
# (t = 1), whose NELBO is the exact autoregressive NLL.
models=(
  "ar 1 --eps-min 1 --eps-max 1"
  "bd3-4 4"
  "bd3-8 8"
  "bd3-16 16"
  "mdlm 128"
  "bd3-4-clip 4 --clip-search --clip-every 160 --clip-batches 2"
  "bd3-16-clip 16 --clip-search --clip-every 160 --clip-batches 2"
)
# train NAME BLOCK SEED [EXTRA...]: trains one model into models/NAME (resumes a partial run).
train() {
  local name=$1 bs=$2 model_seed=$3 dir=$out/models/$1
  shift 3
  if [ -f "$dir/checkpoint.json" ] && [ "$(jq -r .step "$dir/checkpoint.json")" = "$steps" ]; then
    echo "$name: trained" >&2
    return 0
  fi
  local resume=()
  [ -f "$dir/checkpoint.json" ] && resume=(--resume)
  echo "training $name (block size $bs, seed $model_seed)" >&2
  run "$bd3" train --data "$corpus" --tokenizer "$out/tokenizer" --block-size "$bs" --length 128 \
    --layers 4 --hidden 256 --heads 4 --cond 128 --batch 16 --steps "$steps" --lr 1e-3 --warmup 50 \
    --cosine --min-lr 1e-4 --seed "$model_seed" --threads "$threads" --checkpoint-every 200 \
    --out "$dir" "${resume[@]}" "$@"
}
step "4/9 training ${#models[@]} models, $steps steps of 16 x 128 tokens each"
for m in "${models[@]}"; do
  read -r name bs extra <<<"$m"
  # shellcheck disable=SC2086
  train "$name" "$bs" "$seed" $extra
done

# eval_to FILE ARGS...: one JSON line into FILE, unless it is there already.
eval_to() {
  local file=$1
  shift
  [ -s "$file" ] && return 0
  run "$bd3" eval "$@" --seed "$seed" --threads "$threads" --quiet >"$file.tmp"
  mv "$file.tmp" "$file"
}
step "5/9 likelihood: the perplexity bound on the held-out split, and zero-shot"
for m in "${models[@]}"; do
  read -r name bs _ <<<"$m"
  full=()
  [ "$name" = ar ] && full=(--eps-min 1 --eps-max 1)  # AR: the exact NLL
  echo "evaluating $name" >&2
  eval_to "$out/eval/$name.json" --model "$out/models/$name" --data "$corpus" --split validation \
    --samples 4 --max-sequences "$eval_sequences" "${full[@]}"
  eval_to "$out/eval/$name.zeroshot.json" --model "$out/models/$name" --data "$zeroshot" --split all \
    --samples 2 --max-sequences "$eval_sequences" "${full[@]}"
done
step "6/9 noise schedules: the estimator's variance under each training interval"
schedule_sequences=$((eval_sequences > 0 ? eval_sequences : 128))
for name in bd3-4 bd3-16 bd3-4-clip bd3-16-clip; do
  # The interval the model trained with (the clipped one is in its config.json).
  config=$out/models/$name/$(jq -r .current "$out/models/$name/checkpoint.json")/config.json
  read -r lo hi < <(jq -r '"\(.sampling_eps_min) \(.sampling_eps_max)"' "$config")
  eval_to "$out/eval/$name.train-interval.json" --model "$out/models/$name" --data "$corpus" --split validation \
    --samples 8 --max-sequences "$schedule_sequences" --eps-min "$lo" --eps-max "$hi"
  # Both models also under the other interval: the variance is a property of the interval.
  eval_to "$out/eval/$name.linear-interval.json" --model "$out/models/$name" --data "$corpus" --split validation \
    --samples 8 --max-sequences "$schedule_sequences"
done

# gen NAME TAG FLAGS...: 32 samples of 128 tokens (JSON lines) scored by the AR judge.
gen() {
  local name=$1 tag=$2
  shift 2
  local file=$out/gen/$name.$tag
  if [ ! -s "$file.score.json" ]; then
    run "$bd3" sample --model "$out/models/$name" --length 128 --batch 32 --seed "$seed" --threads "$threads" \
      --json "$@" >"$file.jsonl.tmp"
    mv "$file.jsonl.tmp" "$file.jsonl"
    run "$bd3" eval-gen --judge "$out/models/ar" --samples "$file.jsonl" --threads "$threads" >"$file.score.json.tmp"
    mv "$file.score.json.tmp" "$file.score.json"
  fi
}
step "7/9 generation: generative perplexity (AR judge), entropy and NFE"
gen ar fh --first-hitting
for spec in "bd3-4 4" "bd3-8 8" "bd3-16 16" "mdlm 128"; do
  read -r name bs <<<"$spec"
  echo "sampling $name" >&2
  gen "$name" fh --first-hitting
  gen "$name" ddpm-half --steps $((bs / 2))
  gen "$name" ddpm-quarter --steps $(((bs / 4) > 0 ? bs / 4 : 1))
done
for name in bd3-4 bd3-16 mdlm; do
  for tau in 0.95 0.8 0.6 0.4 0.2; do gen "$name" "tau$tau" --threshold "$tau"; done
done
gen bd3-4 topp0.9 --first-hitting --top-p 0.9

step "8/9 sampler speed with and without the KV cache (batch 1, 512 tokens)"
# speed NAME TAG [FLAGS...]: one sequence of 512 tokens (past the 128-token training
# length, through the sliding window); tokens/s. BATCH=n speed ... samples n at once.
speed() {
  local name=$1 tag=$2
  shift 2
  local file=$out/speed/$name.$tag.json
  [ -s "$file" ] && return 0
  # A sample that stays degenerate (the stop rule: 256 tokens of entropy < 4 nats) after
  # the retries is an error of bd3 sample; the table then lacks that row, the run goes on.
  if run "$bd3" sample --model "$out/models/$name" --length 512 --batch "${BATCH:-1}" --seed "$seed" \
    --threads "$threads" --json "$@" >"$file.tmp"; then
    mv "$file.tmp" "$file"
  else
    echo "speed $name $tag: bd3 sample failed (see above); left out" >&2
    rm -f "$file.tmp"
  fi
}
for name in ar bd3-4 bd3-16 mdlm; do
  speed "$name" fh-cache --first-hitting
  speed "$name" fh-nocache --first-hitting --no-kv-cache
done
# The fused commit (the cache commit of a finished block rides along with the next
# block's first call) and batching (8 sequences per forward).
speed bd3-4 fh-unfused --first-hitting --no-fused-commit
BATCH=8 speed bd3-4 fh-batch8 --first-hitting
for name in bd3-4 bd3-16; do
  speed "$name" tau0.8-cache --threshold 0.8
  speed "$name" tau0.8-nocache --threshold 0.8 --no-kv-cache
  speed "$name" ddpm-half-cache --steps "$([ "$name" = bd3-4 ] && echo 2 || echo 8)"
  speed "$name" ddpm-half-nocache --steps "$([ "$name" = bd3-4 ] && echo 2 || echo 8)" --no-kv-cache
done

step "9/9 seed spread: B'=4 and B'=16 trained again with seed $((seed + 1))"
# The likelihood table has one training seed per model; these two runs measure how far
# the perplexity bound moves with the seed alone (initialisation, data order, masks).
for spec in "bd3-4 4" "bd3-16 16"; do
  read -r name bs <<<"$spec"
  train "$name-seed$((seed + 1))" "$bs" "$((seed + 1))"
  eval_to "$out/eval/$name-seed$((seed + 1)).json" --model "$out/models/$name-seed$((seed + 1))" --data "$corpus" \
    --split validation --samples 4 --max-sequences "$eval_sequences"
done

end=$(date +%s)
# One line per invocation: a resumed run adds its own part (results.py sums them).
echo "$((end - start))" >>"$out/run_seconds"
step "writing $docs/results.md"
run python3 "$root/scripts/results.py" --out "$out" --docs "$docs" --steps "$steps" --seed "$seed"
echo "done in $((end - start)) s; results: $docs/results.md, runs: $out" >&2
