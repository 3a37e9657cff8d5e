"""The full-size family estimates of docs/estimate-evidence.md, with what each one costs.

Not a test. Each estimate runs in a fresh interpreter (``--one``), so that its wall time and
its peak resident set (``VmHWM`` of /proc/self/status: the whole process, imports included)
are the estimate's own; the parent prints one line a run and the estimate's report.

    PYTHONPATH=. python benchmarks/estimate_families.py [--runs sdxl:fp16+sdpa:1 ...]

The default runs are SDXL and Flux-dev at their families' defaults (1024x1024; SDXL in fp16,
Flux-dev in bf16, as diffusers' docs load them; SDPA everywhere), batch 1 and 4.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

DEFAULT_RUNS = ("sdxl:fp16+sdpa:1", "sdxl:fp16+sdpa:4",
                "flux-dev:bf16+sdpa:1", "flux-dev:bf16+sdpa:4")


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM), in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def one(run: str) -> None:
    """Estimate ``model:technique:batch`` at the model's defaults and print the report and
    the cost (wall time from before the imports)."""
    started = time.perf_counter()
    model, technique, batch = run.split(":")
    from pytest_sdmem.building.generation import generation_defaults
    from pytest_sdmem.estimate import estimate_generation

    args = generation_defaults(model).with_overrides(batch_size=int(batch))
    report = estimate_generation(model, technique, args)
    wall = time.perf_counter() - started
    print(report)
    print(f"COST {run}: {wall:.1f} s wall (estimate {report.seconds:.1f} s), "
          f"peak RSS {peak_rss_bytes() / 1e9:.2f} GB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS),
                        help="model:technique:batch, e.g. flux-dev:bf16+sdpa:4")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        one(options.one)
        return 0
    for run in options.runs:
        done = subprocess.run([sys.executable, __file__, "--one", run], check=False)
        if done.returncode:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
