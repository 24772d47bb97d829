#!/usr/bin/env bash
# Sets up everything hyperkeras needs, idempotently: a venv at .venv with the pinned requirements, and
# (where apt is available) Debian's Fashion-MNIST package. hyperkeras itself is used from the repo root
# (`python -m experiments.X`, `python -m pytest`), not installed, so that Bazel's tests see only the
# modules their BUILD targets declare; `pip install .` installs it for use elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.hyperkeras-requirements
want=$(cat requirements.txt requirements-no-deps.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -r requirements-no-deps.txt  # one TensorFlow (see the file)
  echo "$want" > "$stamp"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  echo "[setup] installing Debian's dataset-fashion-mnist"
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1; then
    echo "[setup] could not install dataset-fashion-mnist; experiments will fall back to --dataset=digits" >&2
  fi
fi
echo "[setup] ready: $(.venv/bin/python -c 'import tensorflow as tf, keras; print("TensorFlow", tf.__version__, "/ Keras", keras.__version__)' 2>/dev/null)"
