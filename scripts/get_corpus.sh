#!/usr/bin/env bash
# Writes the default bd3 corpus, the King James Bible (Debian's bible-kjv), to a path
# if it is not there yet. Usage: scripts/get_corpus.sh [path]   (default
# ${BD3_CORPUS:-/tmp/bd3_corpus/kjv.txt}).
# Layout: one verse per line with the "Gen1:1 " style reference removed, and one blank
# line between chapters, so that every chapter is one document of the corpus pipeline.
set -euo pipefail
out=${1:-${BD3_CORPUS:-/tmp/bd3_corpus/kjv.txt}}
if [ -s "$out" ]; then
  exit 0
fi
if ! command -v bible >/dev/null 2>&1; then
  echo "bd3: installing Debian package bible-kjv" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    bible-kjv >&2
fi
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# Each line of `bible -f` is "<Book><chapter>:<verse> <text>", the book abbreviation
# possibly starting with a digit ("1Sm3:4"). Anything else is an error, not silently kept.
bible -f "Gen1:1-Rev22:21" | awk '
  {
    if (!match($0, /^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ /)) {
      print "get_corpus.sh: unexpected line " NR ": " $0 > "/dev/stderr"; exit 1
    }
    ref = substr($0, 1, RLENGTH - 1)
    chapter = ref; sub(/:[0-9]+$/, "", chapter)
    if (NR > 1 && chapter != last) print ""
    last = chapter
    print substr($0, RLENGTH + 1)
  }' >"$tmp"
verses=$(grep -c . "$tmp" || true)
if [ "$verses" -ne 31102 ]; then
  echo "get_corpus.sh: expected 31102 verses, got $verses" >&2
  exit 1
fi
mv "$tmp" "$out"
trap - EXIT
echo "bd3: wrote $out ($(wc -c <"$out") bytes)" >&2
