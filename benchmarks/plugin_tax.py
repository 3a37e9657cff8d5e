"""What installing pytest-sdmem costs a pytest run that does not use it.

Runs a one-test pytest session in a fresh interpreter, with the plugin loaded and with
``-p no:sdmem``, alternately (A B B A ...) so that drift of a shared machine falls on both, and
prints the median wall time and the median peak RSS (the child's ``ru_maxrss``) of each, and
the difference. The goal is at most +50 ms and +10 MB.

The children run from bytecode, as an installed package does (``pip`` compiles it): with
``PYTHONDONTWRITEBYTECODE`` set, every run would compile the plugin's sources again and the
figure would be the compiler's. The first, uncounted run writes the ``__pycache__`` files.

Not a pass/fail test: the README quotes its output, measured the day it is written.

    python benchmarks/plugin_tax.py [--runs 10]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TEST = "def test_one():\n    assert 1 + 1 == 2\n"
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@dataclass
class Run:
    """One pytest session: its wall time and the peak resident memory of its process."""

    seconds: float
    max_rss_bytes: int


def run_pytest(directory: Path, extra: list[str]) -> Run:
    """One fresh ``python -m pytest`` on the one-test file. ``os.wait4`` gives that child's own
    resource usage, so its peak RSS is its own, not the largest of all children so far."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              *extra, "test_one.py"], cwd=directory,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"pytest {' '.join(extra)} failed with exit code {child.returncode}")
    return Run(seconds, usage.ru_maxrss * 1024)  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="sessions of each kind (default 10)")
    args = parser.parse_args()
    kinds = {"with the plugin": [], "-p no:sdmem": ["-p", "no:sdmem"]}
    runs: dict[str, list[Run]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "test_one.py").write_text(TEST)
        run_pytest(directory, [])  # writes the bytecode, warms the file caches; not counted
        for i in range(args.runs):
            order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
            for kind in order:
                runs[kind].append(run_pytest(directory, kinds[kind]))
    print(f"pytest-sdmem plugin tax, {datetime.date.today().isoformat()}, "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"median of {args.runs} alternating runs of a one-test session")
    print()
    print("| | wall time | peak RSS |")
    print("|---|---|---|")
    medians = {}
    for kind, values in runs.items():
        t = statistics.median(r.seconds for r in values)
        m = statistics.median(r.max_rss_bytes for r in values)
        medians[kind] = (t, m)
        print(f"| {kind} | {t * 1000:.0f} ms | {m / 1e6:.1f} MB |")
    (t1, m1), (t0, m0) = medians["with the plugin"], medians["-p no:sdmem"]
    print(f"| difference | {(t1 - t0) * 1000:+.0f} ms | {(m1 - m0) / 1e6:+.1f} MB |")


if __name__ == "__main__":
    main()
