#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job on the embedded default data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
dataset=fashion_mnist
[ -d /usr/share/datasets/fashion-mnist ] || [ -n "${HYPERKERAS_DATA_DIR:-}" ] || dataset=digits
exec .venv/bin/python -m experiments.demo --dataset="$dataset" --output_dir=runs/demo "$@"
