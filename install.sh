#!/usr/bin/env bash
# Install echochamber into ./.venv (CPU PyTorch), with the test extras, and bubblewrap for the sandbox where apt
# is available. Safe to run again. Usage: ./install.sh   (then .venv/bin/echochamber ...)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

# bubblewrap isolates model-written code (no network, read-only system). Without it the sandbox still runs,
# with fewer protections, and says so loudly.
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bubblewrap; } >/dev/null 2>&1 \
    || echo "install.sh: could not install bubblewrap; the sandbox will run without it" >&2
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build. On a GPU machine,
# install the torch build for your CUDA instead (TORCH_SPEC="torch==2.13.0 --index-url ...").
.venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install -q -e ".[test]"
echo "installed: $(.venv/bin/python -c 'import echochamber, torch; print("echochamber", echochamber.__version__, "torch", torch.__version__)')"
