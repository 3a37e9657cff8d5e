"""Fail when a pip install plan would bring in torch or a CUDA wheel.

Reads the JSON that ``pip install --dry-run --report FILE ...`` writes. On the CPU runner torch
is installed first from PyTorch's CPU index; the project's install must then keep it. A plan
that holds torch would replace it (a version cap the installed one does not meet), and one that
holds NVIDIA/CUDA or triton wheels brings gigabytes that a CPU job never uses.

Exit status: 0 clean plan, 1 unwanted wheels in the plan (each named), 2 unreadable report.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

#: Names (PEP 503 normalised) that a CPU install must not plan.
UNWANTED = re.compile(r"^(torch|triton|pytorch-triton.*|nvidia-.*|cuda-.*|cupy-cuda.*)$")


def planned(report: dict) -> list[tuple[str, str]]:
    """(name, version) of each distribution the report says pip would install."""
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in report["install"]]


def unwanted(plan: list[tuple[str, str]]) -> list[str]:
    """``name==version`` of each planned distribution that a CPU install must not pull."""
    return [f"{name}=={version}" for name, version in plan
            if UNWANTED.match(re.sub(r"[-_.]+", "-", name).lower())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the file pip's --report wrote")
    args = parser.parse_args(argv)
    try:
        plan = planned(json.loads(args.report.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"check_install_plan: cannot read a pip report from {args.report}: {exc!r}",
              file=sys.stderr)
        return 2
    bad = unwanted(plan)
    if bad:
        print("the install would replace torch or pull CUDA wheels on a CPU runner: "
              + ", ".join(bad), file=sys.stderr)
        return 1
    print(f"install plan: {len(plan)} distributions, no torch and no CUDA wheel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
