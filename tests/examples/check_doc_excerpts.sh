#!/usr/bin/env bash
# Checks that every C++ block of a doc is an excerpt of an example that CI compiles: each
# ```cpp block must follow a line `<!-- examples/NAME.cpp [TAG] -->` and equal the lines
# between the two `// [TAG]` lines of that file (both sides without their common
# indentation). Usage: check_doc_excerpts.sh ROOT DOC...
set -euo pipefail
root=$1
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Prints its input without the indentation common to its non-empty lines.
dedent() {
  awk '{ line[NR] = $0; if ($0 ~ /[^ ]/) { match($0, /^ */); if (min == "" || RLENGTH < min) min = RLENGTH } }
       END { for (i = 1; i <= NR; ++i) print substr(line[i], min + 1) }'
}
status=0 blocks=0
for doc in "$@"; do
  # Each block becomes work/N.{src,tag,doc}; a cpp block without a marker is an error.
  awk -v dir="$work" '
    /^<!-- examples\/[a-z_\/]+\.cpp \[[a-z_0-9]+\] -->$/ { split($0, f, " "); src = f[2]; tag = f[3]; next }
    /^```cpp$/ { n++; if (src == "") { print "unmarked cpp block at line " NR; bad = 1 }
                 print src > (dir "/" n ".src"); print tag > (dir "/" n ".tag"); inblock = 1; next }
    /^```$/ && inblock { inblock = 0; src = ""; next }
    inblock { print > (dir "/" n ".doc") }
    END { exit bad }' "$doc" || { echo "$doc: every cpp block needs a marker line"; status=1; }
  for s in "$work"/*.src; do
    [ -e "$s" ] || continue
    n=${s%.src} src=$(cat "$s") tag=$(cat "$n.tag")
    [ -n "$src" ] || { rm -f "$n".*; continue; }  # reported above
    file="$root/$src"
    [ -f "$file" ] || { echo "$doc: $src does not exist"; status=1; continue; }
    name=${tag#[} name=${name%]}
    awk -v name="$name" '$0 ~ ("^ *// \\[" name "\\]$") { if (on) exit; on = 1; next } on' "$file" |
      dedent >"$n.want"
    dedent <"$n.doc" >"$n.got"
    if [ ! -s "$n.want" ]; then
      echo "$doc: $src has no lines between two '// $tag' marks"; status=1
    elif ! diff -u "$n.want" "$n.got" >"$n.diff"; then
      echo "$doc: the block marked $src $tag differs from the file:"; cat "$n.diff"; status=1
    fi
    blocks=$((blocks + 1))
    rm -f "$n".*
  done
done
[ "$status" -eq 0 ] && echo "$blocks excerpts equal their examples"
exit "$status"
