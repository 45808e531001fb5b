#!/usr/bin/env bash
# Writes the last 16 KB of the default corpus ($BD3_CORPUS, else /tmp/bd3_corpus/kjv.txt)
# to OUT: a text the examples' tiny model did not train on (the corpus pipeline holds out
# the last 5 % of the sequences). Usage: excerpt.sh OUT. Exits 77 (ctest: skipped) when
# there is no corpus.
set -euo pipefail
corpus=${BD3_CORPUS:-/tmp/bd3_corpus/kjv.txt}
if [ ! -s "$corpus" ]; then
  echo "no corpus at $corpus (run scripts/get_corpus.sh)"
  exit 77
fi
mkdir -p "$(dirname "$1")"
tail -c 16384 "$corpus" >"$1"
echo "wrote the last 16384 bytes of $corpus to $1"
