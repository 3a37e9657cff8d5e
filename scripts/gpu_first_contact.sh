#!/usr/bin/env bash
# Everything that needs a GPU, in one prepared run that ends before a deadline: for a borrowed
# machine whose minutes are few (docs/gpu.md, "First contact with a borrowed GPU").
#
#   scripts/gpu_first_contact.sh OUTDIR [DEADLINE_S]        (default DEADLINE_S: 540)
#
# Steps, in order; each starts only if its expected time still fits before the deadline, and
# is stopped at the deadline if it runs over (its output so far is kept):
#   1. estimate_gate  benchmarks/estimate_vs_gpu.py --rows gate: issue 14's matrix, the CPU
#                     estimate beside the measured peak (about 2 minutes; sd15 is built here)
#   2. cudnn          benchmarks/cudnn_workspaces.py: each VAE convolution's workspace
#   3. the GPU tier's parts, scripts/gpu_acceptance.sh -k PART, in the order and with the
#      expected times of benchmarks/gpu_time_budget.py --parts (A100 figures on paper)
# Writes OUTDIR/summary.md (each step: exit status, seconds, or why it was skipped) and
# OUTDIR/first_contact.tar.gz (every step's directory and log): two files, so that a machine
# that sends back few files sends back everything. Exits 0 when every step that ran passed.
set -uo pipefail

if [ "$#" -lt 1 ]; then
  echo "usage: $0 OUTDIR [DEADLINE_S]" >&2
  exit 2
fi
mkdir -p "$1"
outdir=$(cd "$1" && pwd)
deadline=${2:-540}
cd "$(dirname "$0")/.." || exit 2
start=$SECONDS
work=$(mktemp -d)

# shellcheck source=scripts/offline_env.sh
. scripts/offline_env.sh   # wheels installed once (SDMEM_WHEELS_SITE), the machine checked

summary=$outdir/summary.md
{
  echo "# GPU first contact ($(date -u +%Y-%m-%dT%H:%MZ), deadline ${deadline} s)"
  echo
  nvidia-smi -L 2>/dev/null || true
  echo
  echo "| step | exit | seconds | note |"
  echo "|---|---|---|---|"
} > "$summary"

failed=0
# step NAME EXPECTED_S COMMAND...: run it if EXPECTED_S fits in what is left, stop it at the
# deadline, and record the outcome.
step() {
  local name=$1 expected=$2 left began status
  shift 2
  left=$(( deadline - (SECONDS - start) ))
  if (( left < expected )); then
    echo "| $name | - | - | skipped: ${left} s left, expected ${expected} s |" >> "$summary"
    return
  fi
  began=$SECONDS
  echo "== $name (expected ${expected} s, ${left} s left)" >&2
  timeout --kill-after=10 "$left" "$@" > "$work/$name.log" 2>&1
  status=$?
  local note=""
  if (( status == 124 || status == 137 )); then
    note="stopped at the deadline"
  fi
  (( status != 0 )) && failed=1
  echo "| $name | $status | $(( SECONDS - began )) | $note |" >> "$summary"
}

step estimate_gate 150 "$python" benchmarks/estimate_vs_gpu.py --device cuda --rows gate \
  --out "$work/estimate"
step cudnn 60 "$python" benchmarks/cudnn_workspaces.py --device cuda --out "$work/estimate"
part=0
while IFS=$'\t' read -r seconds expr; do
  part=$(( part + 1 ))
  step "part$part" "$seconds" scripts/gpu_acceptance.sh "$work/part$part" -k "$expr"
done < <("$python" benchmarks/gpu_time_budget.py --parts)

{
  echo
  echo "Parts: $("$python" benchmarks/gpu_time_budget.py --parts | tr '\t' ' ' | paste -sd ';')"
  echo "Total: $(( SECONDS - start )) s of the ${deadline} s deadline."
} >> "$summary"
tar czf "$outdir/first_contact.tar.gz" -C "$work" .
rm -rf "$work"
cat "$summary"
exit "$failed"
