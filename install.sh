#!/usr/bin/env bash
# Install echochamber into ./.venv (CPU PyTorch), with the test and wandb extras, and bubblewrap for the sandbox
# where apt is available. Safe to run again. Usage: ./install.sh   (then .venv/bin/echochamber ...)
#
# Every package is installed at the version constraints.txt names: a fresh clone then gets the packages the
# README's figures were measured with, not whatever is newest on the day (a newer tokenizers, say, trains another
# BPE, and every number after it moves). `./install.sh --relock` installs the newest versions instead and writes
# them to constraints.txt: measure the README's figures again before committing that.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
RELOCK=0
case "${1:-}" in
  "") ;;
  --relock) RELOCK=1 ;;
  *) echo "usage: ./install.sh [--relock]" >&2; exit 2 ;;
esac

# bubblewrap isolates model-written code (no network, read-only system). Without it the sandbox still runs,
# with fewer protections, and says so loudly.
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bubblewrap; } >/dev/null 2>&1 \
    || echo "install.sh: could not install bubblewrap; the sandbox will run without it" >&2
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
LOCK=(-c constraints.txt); [ "$RELOCK" = 1 ] && LOCK=()
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build. On a GPU machine,
# install the torch build for your CUDA instead (TORCH_SPEC="torch==2.13.0 --index-url ...").
.venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install -q "${LOCK[@]}" -e ".[test,wandb]"  # wandb: tests/test_tracking.py, offline
if [ "$RELOCK" = 1 ]; then
  { sed -n '/^#/p' constraints.txt | sed "s/Resolved by a fresh .\/install.sh on [0-9-]*/Resolved by a fresh .\/install.sh on $(date -u +%F)/"
    # (torch without its local label: the same line then admits the CUDA build a GPU machine installs)
    .venv/bin/python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > constraints.txt.new
  mv constraints.txt.new constraints.txt
  echo "install.sh: wrote constraints.txt from this install"
fi
echo "installed: $(.venv/bin/python -c 'import echochamber, torch; print("echochamber", echochamber.__version__, "torch", torch.__version__)')"
