#!/usr/bin/env bash
# Checks the mpo.v1 contracts: buf lint, buf breaking against the last released contract, and the
# freshness of the generated Python stubs. Runs from any directory.
#
#   bash protos/check.sh
#
# buf comes from `npm ci` at the repository root (node_modules/.bin/buf, pinned in package-lock.json);
# PYTHON (default .venv/bin/python at the repository root) runs protos/generate.py --check.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
buf="$root/node_modules/.bin/buf"
python="${PYTHON:-$root/.venv/bin/python}"
released="$root/protos/released/mpo-v1.binpb"

if [[ ! -x "$buf" ]]; then
  echo "[protos] error: $buf is missing; run \`npm ci\` in $root (or \`bash deploy/install.sh dev\`)" >&2
  exit 1
fi

echo "[protos] buf lint"
"$buf" lint "$root/protos"
echo "[protos] buf breaking against ${released#"$root"/}"
"$buf" breaking "$root/protos" --against "$released"
echo "[protos] generated stubs"
"$python" "$root/protos/generate.py" --check
