#!/usr/bin/env bash
# The main job: on a fresh Debian 12 machine, install what is missing, build bd3, get the
# default corpus (the King James Bible), train a BPE tokenizer and a small BD3-LM (block
# size 4) on it, evaluate the perplexity bound on the held-out split, and sample from it
# with the KV cache. About 15 minutes on 2 cores. Usage: scripts/demo.sh [output-dir]
# Environment: BD3_DEMO_SECONDS (training time budget, default 480).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/out/demo}
build=$root/build/release
seconds=${BD3_DEMO_SECONDS:-480}
step() { printf '\n== %s\n' "$*" >&2; }

step "1/6 Debian packages"
"$root/scripts/deps.sh"

step "2/6 building the bd3 program (Release)"
# clang by default (CXX=g++ for GCC): GCC 12 compiles Eigen's GEMM kernel with spilled
# registers and re-loaded operands, which costs the forward and training passes a quarter
# of their speed (docs/performance.md, "Compilers").
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER="${CXX:-clang++}" >/dev/null
cmake --build "$build" --target bd3_cli -j "$(nproc)"
bd3=$build/bd3

step "3/6 the default corpus: King James Bible (Debian bible-kjv)"
corpus=$out/kjv.txt
mkdir -p "$out"
"$root/scripts/get_corpus.sh" "$corpus"
echo "corpus: $corpus ($(wc -c <"$corpus") bytes, $(grep -c . "$corpus") verses)" >&2

step "4/6 BPE tokenizer (4096 tokens) trained on the corpus"
if [ ! -s "$out/tokenizer/merges.txt" ]; then
  "$bd3" tokenizer train --data "$corpus" --vocab-size 4096 --out "$out/tokenizer"
fi

step "5/6 training a BD3-LM: block size 4, length 128, 4 layers, hidden 256 (${seconds}s budget)"
"$bd3" train --data "$corpus" --tokenizer "$out/tokenizer" --block-size 4 --length 128 \
  --layers 4 --hidden 256 --heads 4 --cond 128 --batch 16 --steps 600 --lr 1e-3 \
  --warmup 100 --seed 1 --threads "$(nproc)" --max-seconds "$seconds" --checkpoint-every 200 \
  --out "$out/model"

step "6/6 evaluation and sampling"
echo "perplexity bound on the held-out split:" >&2
"$bd3" eval --model "$out/model" --data "$corpus" --split validation --samples 1 --seed 1
# Nucleus sampling (top-p 0.9), as the paper samples: cutting the tail of a small model's
# p_x0 lowers the generative perplexity of B'=4 samples from 2035 to 1373 (docs/results.md).
echo "two samples (first-hitting with top-p 0.9, KV cache, 256 tokens each):" >&2
"$bd3" sample --model "$out/model" --length 256 --seed 1 --top-p 0.9 --batch 2
echo "one more without top-p, as JSON (ids, text, nfe, commit_calls, tokens_per_s):" >&2
"$bd3" sample --model "$out/model" --length 256 --seed 2 --json

cat >&2 <<MSG

Done. The model (config.json, model.safetensors, tokenizer, trainer state) is in
  $out/model
Training log: $out/model/metrics.jsonl
Try:  $bd3 sample --model $out/model --length 512 --seed 7 --threshold 0.9 --json
MSG
