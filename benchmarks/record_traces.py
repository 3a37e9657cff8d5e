"""Record real paired timing traces on this machine, for ``benchmarks/verdict_simulation.py``.

Not a test: it writes one JSON file per run under ``benchmarks/data/``. A trace is what
``timing.measure_speedup`` sees, without the verdict: pairs of rounds in alternating order
(base then test, then test then base, ...) after one untimed warm-up pair, for far more pairs
than a verdict takes, so that the simulation can replay many runs of the sequential plan over
it (windows of consecutive pairs keep the machine's drift and its bursts as they happened).

Workloads (``--workload``):

- ``tiny``: the ``tiny`` pipeline on the CPU, 64x64, one image, technique ``none``; the test
  generation has 2 steps, the baseline 4 (the set-up of ``benchmarks/speedup_verdict.py``).
- ``numpy``: ``np.sin`` over 20k doubles, 5 passes against 10 (the set-up of the timing unit
  tests): rounds of ~1 ms, where a scheduler's time slice is as long as a round.

The label (``--label quiet`` or ``loaded``) is the operator's statement of what else ran on the
machine; the load averages before and after are stored next to it so a reader can check it.

    python benchmarks/record_traces.py --workload tiny --pairs 150 --label loaded

The file is rewritten after every pair, so a run stopped early keeps the pairs it timed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

DATA = Path(__file__).parent / "data"


def numpy_workload() -> tuple[Callable[[], None], Callable[[], None], str]:
    import numpy as np

    data = np.linspace(0.0, 1.0, 20_000)
    out = np.empty_like(data)

    def work(passes: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(passes):
                np.sin(data, out=out)

        return run

    return work(5), work(10), "np.sin over 20k doubles: 5 passes (test) against 10 (base)"


def record(fn_test: Callable[[], None], fn_base: Callable[[], None], pairs: int,
           save: Callable[[list[dict[str, float]]], None]) -> None:
    """``pairs`` pairs in measure_speedup's order, after one untimed warm-up pair; ``save``
    gets the pairs so far after each one, so a run cut short still leaves its trace."""
    fn_base()
    fn_test()
    rows: list[dict[str, float]] = []
    for i in range(pairs):
        order = (fn_base, fn_test) if i % 2 == 0 else (fn_test, fn_base)
        times = {}
        for fn in order:
            start = perf_counter()
            fn()
            times["base" if fn is fn_base else "test"] = perf_counter() - start
        rows.append(times)
        save(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["tiny", "numpy"], required=True)
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--label", choices=["quiet", "loaded"], required=True,
                        help="what else ran on the machine, as the operator knows it")
    parser.add_argument("--out", type=Path, help="default: benchmarks/data/LABEL-WORKLOAD.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    out = args.out or DATA / f"{args.label}-{args.workload}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "label": args.label,
        "date": f"{started:%Y-%m-%d %H:%M} UTC",
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python "
                   f"{platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "order": "pair i (from 0): base first when i is even, test first when odd",
    }

    def save(rows: list[dict[str, float]]) -> None:
        out.write_text(json.dumps({
            **meta,
            "load_average_now": [round(x, 2) for x in os.getloadavg()],
            "test": [round(r["test"], 6) for r in rows],
            "base": [round(r["base"], 6) for r in rows],
        }, indent=1) + "\n")

    if args.workload == "numpy":
        fn_test, fn_base, meta["workload"] = numpy_workload()
        record(fn_test, fn_base, args.pairs, save)
    else:
        import torch

        from pytest_sdmem.building.generation import GenerationArgs
        from pytest_sdmem.building.runner import make_sd_pipe

        torch.set_num_threads(1)
        meta["torch"] = torch.__version__
        meta["workload"] = ("tiny pipeline, CPU (1 thread), 64x64, 1 image, technique none: "
                            "2 steps (test) against 4 (base)")
        with tempfile.TemporaryDirectory() as cache, make_sd_pipe(
                "tiny", "none", "cpu", cache, GenerationArgs(height=64, width=64)) as pipe:
            record(lambda: pipe(num_inference_steps=2),
                   lambda: pipe(num_inference_steps=4), args.pairs, save)
    print(f"{args.pairs} pairs -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
