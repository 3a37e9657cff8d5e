#!/usr/bin/env bash
# The technique suite's GPU tier on a machine with an NVIDIA GPU and no network, in one command:
#
#   scripts/gpu_acceptance.sh OUTDIR [extra pytest arguments, e.g. -k guide_table]
#
# Wheels the machine lacks (diffusers, xformers, ...) are taken from .whl/ when present (fill it
# on a machine with network access: pip download --no-deps --only-binary=:all: for the GPU
# machine's Python and platform): they are installed into a temporary directory put on
# PYTHONPATH, so the machine's own packages stay untouched.
# Before pytest starts, scripts/offline_env.sh checks the machine (python -m
# pytest_sdmem.doctor --gpu): a missing package or no visible GPU stops the script with the
# list (exit 1); what the tier will skip (compile without a C compiler or Python.h) is noted.
# Writes into OUTDIR:
#   results.json  the session's figures (--sdmem-json)
#   table.md      the table of that file (sdmem report --format md)
#   junit.xml     JUnit XML, with every figure as a property
#   pytest.log    the whole pytest output, durations included
#   estimate.json the same tests estimated without the GPU (--sdmem-estimate, on this CPU,
#                 beside the GPU tests)
#   overhead.toml this card's overhead over those estimates (sdmem calibrate): the table to add
#                 to tests/techniques/budgets.toml after reading it (docs/estimates.md: "Reserved and
#                 process budgets on an estimate")
# Exits with pytest's status, after writing the table even when tests failed.
set -euo pipefail

if [ "$#" -lt 1 ]; then
  echo "usage: $0 OUTDIR [pytest arguments]" >&2
  exit 2
fi
mkdir -p "$1"
outdir=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")/.."

# shellcheck source=scripts/offline_env.sh
. scripts/offline_env.sh

# pytest loads the plugin through its entry point when the project is installed; from a plain
# checkout it must be named.
plugin=()
if ! "$python" - <<'EOF'
import importlib.metadata as md
import sys
sys.exit(not any(ep.value == "pytest_sdmem.plugin.hooks" for ep in md.entry_points(group="pytest11")))
EOF
then
  plugin=(-p pytest_sdmem.plugin.hooks)
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L
fi

# Another process on the GPU makes the figures wrong: refuse to measure with one there
# (--sdmem-exclusive names it). That check needs NVML; without nvidia-ml-py the session
# warns that it could not check, and runs.
exclusive=()
if "$python" -c "import pynvml" 2>/dev/null; then
  exclusive=(--sdmem-exclusive)
fi

# The estimate of the same tests (same generations: the estimate's defaults are the GPU run's)
# needs no GPU: it runs beside the GPU tests instead of after them (about 75 s of CPU on a
# 2-core machine, a quarter of the tier's budget: docs/gpu-time-budget.md), on one thread at the
# lowest priority, without pytest's cache (the GPU session writes it). It never touches the
# device, so the GPU session's exclusivity check does not see it.
rm -f "$outdir/estimate.json" "$outdir/overhead.toml"
OMP_NUM_THREADS=1 nice -n 19 "$python" -m pytest "${plugin[@]}" -p no:cacheprovider \
  --sdmem-estimate tests/techniques --sdmem-json "$outdir/estimate.json" -q "$@" \
  > "$outdir/estimate.log" 2>&1 &
estimate_pid=$!
# Interrupted or failed before the wait below: the estimate does not outlive the script.
trap 'kill "$estimate_pid" 2>/dev/null || true' EXIT

# --sdmem-max-time 60: a speed-up verdict needs 3-4 timed pairs (pytest_sdmem.measuring.speedup.
# SequentialPlan); the slowest pair of the tier (SD 1.5 in fp32, 25 steps, or fp16 with model
# offload at 50 steps, with its baseline) takes a few seconds on an H100, so 60 s holds the
# first looks many times over and a heavy-tailed run's distribution-free interval (10+ pairs).
# A budget too short for even the first look fails that test up front, naming the time needed.
status=0
"$python" -m pytest "${plugin[@]}" --gpu "${exclusive[@]}" tests/techniques --sdmem-max-time 60 \
  --sdmem-json "$outdir/results.json" --junitxml "$outdir/junit.xml" \
  -rA --durations=0 "$@" 2>&1 | tee "$outdir/pytest.log" || status=$?
# With pipefail the status above is pytest's, unless tee itself failed.
wait "$estimate_pid" || true  # its status is not the tier's verdict

if [ -f "$outdir/results.json" ]; then
  "$python" -m pytest_sdmem.cli report "$outdir/results.json" --format md \
    -o "$outdir/table.md"
  echo "results: $outdir/results.json, table: $outdir/table.md"
  # The card's overhead over the estimates. It does not change the exit status: that is the
  # GPU tier's verdict.
  if [ -f "$outdir/estimate.json" ] && "$python" -m pytest_sdmem.cli calibrate \
      "$outdir/results.json" "$outdir/estimate.json" > "$outdir/overhead.toml"; then
    echo "overhead: $outdir/overhead.toml"
  else
    rm -f "$outdir/overhead.toml"
    echo "no overhead was calibrated: see $outdir/estimate.log" >&2
  fi
else
  echo "no results were written (pytest exit status $status): see $outdir/pytest.log" >&2
fi
exit "$status"
