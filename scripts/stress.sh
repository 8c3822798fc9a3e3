#!/usr/bin/env bash
# Run a test command N times in a row while two busy loops hold two cores, and count the
# runs that pass: how the suite was shown not to depend on timing.
#
#   scripts/stress.sh 5                                                 # make test's tests
#   scripts/stress.sh 50 tests/app/test_preprocess_workers.py           # one file
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
shift || true
python=${PYTHON:-.venv/bin/python}
( while :; do :; done ) & busy1=$!
( while :; do :; done ) & busy2=$!
trap 'kill $busy1 $busy2 2>/dev/null' EXIT
passed=0
for run in $(seq "$runs"); do
    started=$(date +%s)
    if "$python" -m pytest -m "not slow" -q -p no:cacheprovider "$@" > "/tmp/stress-run-$run.log" 2>&1; then
        passed=$((passed + 1))
    fi
    echo "run $run: $(tail -n 1 "/tmp/stress-run-$run.log") ($(( $(date +%s) - started )) s)"
done
echo "under two busy loops: $passed of $runs runs passed"
[ "$passed" -eq "$runs" ]
