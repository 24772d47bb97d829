#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two worker processes (pytest-xdist): 1,164 s instead of 1,812 s for the whole suite on a 2-core machine
# (653 passed either way, 2026-12-07); 610 s for 716 tests on an idle AVX-512 2-core machine with work
# stealing (fifth session). PYTEST_WORKERS=0 runs it in one process. Work stealing: a worker
# that runs out takes tests queued for the other, so the minute-long end-to-end runs do not leave one idle.
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist worksteal tests "$@"
