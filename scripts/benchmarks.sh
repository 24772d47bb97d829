#!/usr/bin/env bash
# Runs every benchmark in benchmarks/ one after another (the README's table is measured with this, on an
# otherwise idle machine) and appends their JSON lines to $1 (default runs/benchmarks/<date>.jsonl).
# Step benchmarks time all four --variants side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/benchmarks/$(date +%F).jsonl}"
mkdir -p "$(dirname "$out")"
py="${PYTHON:-.venv/bin/python}"
export TF_CPP_MIN_LOG_LEVEL=2
for bench in conv_gradients target_apply deutsch_step hypergan_step hyperlstm_step static_overhead ensemble_eval serving; do
  args=()
  case "$bench" in
    deutsch_step | hypergan_step | hyperlstm_step) args=(--variants all) ;;
  esac
  echo "== $bench ${args[*]}" >&2
  start=$(date +%s)
  "$py" -m "benchmarks.$bench" "${args[@]}" | tail -n 1 | tee -a "$out"
  echo "   $bench: $(($(date +%s) - start)) s" >&2
done
