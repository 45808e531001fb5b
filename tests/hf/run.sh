#!/usr/bin/env bash
# Runs tests/hf/hf_peer.cjs (Hugging Face's JavaScript client reading what bd3 wrote),
# installing its npm package into tests/hf/node_modules first when that is missing or
# another version (as bench/tiktoken's peer: `npm install --prefix DIR`). Without node,
# npm or the npm registry the test cannot run: it fails (exit 3) and says why.
#
# Usage: tests/hf/run.sh CASES.json
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
want=$(sed -n 's/.*"@huggingface\/transformers": *"\([^"]*\)".*/\1/p' "$here/package.json")
have=$(node -p "require('$here/node_modules/@huggingface/transformers/package.json').version" 2>/dev/null || true)
if [[ "$have" != "$want" ]]; then
  command -v node >/dev/null && command -v npm >/dev/null || {
    echo "tests/hf/run.sh: node and npm are needed (Debian: nodejs, npm) to install @huggingface/transformers" >&2
    exit 3
  }
  # --ignore-scripts: the client's native runtimes ship in the packages; their install
  # scripts only fetch optional GPU builds from outside the npm registry.
  if ! log=$(npm install --prefix "$here" --ignore-scripts --no-audit --no-fund --loglevel=error 2>&1); then
    echo "tests/hf/run.sh: cannot install @huggingface/transformers@$want from the npm registry: $(echo "$log" | tail -n 3 | tr '\n' ' ')" >&2
    exit 3
  fi
fi
exec node "$here/hf_peer.cjs" "$@"
