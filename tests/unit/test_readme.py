"""README and docs/ are the user's manual: every option and technique the code has is documented,
every page is reachable from the README, and the README's example is true on the real model."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import diffusers
import transformers

from pytest_sdmem.base.units import parse_size
from pytest_sdmem.building.pipelines import SYNTHETIC_MODELS, get_spec
from pytest_sdmem.building.techniques import FAMILIES, PRESETS, REGISTRY
from pytest_sdmem.plugin.options import OPTIONS

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = ROOT / "docs"


def test_every_option_is_documented() -> None:
    markers = (DOCS / "markers.md").read_text(encoding="utf-8")
    missing = [o.flag for o in OPTIONS if f"`{o.flag}" not in markers]
    assert not missing, f"options missing from docs/markers.md's options table: {missing}"


def test_every_technique_and_preset_is_documented() -> None:
    techniques = (DOCS / "techniques.md").read_text(encoding="utf-8")
    missing = [name for name in [*REGISTRY, *PRESETS] if f"`{name}" not in techniques]
    assert not missing, f"techniques missing from docs/techniques.md: {missing}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    unlinked = [page.name for page in DOCS.glob("*.md") if f"](docs/{page.name}" not in README]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "python -m pytest tests"
    assert f"\n{command}\n" in README and f"\n{command}\n" in ci


def headline_example() -> tuple[str, int, int]:
    """The technique, batch size and budget (bytes) of the README's first Python example."""
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code is not None, "the README has no Python example"
    test = next(node for node in ast.walk(ast.parse(code.group(1)))
                if isinstance(node, ast.FunctionDef))
    marks = {ast.unparse(d.func): d for d in test.decorator_list if isinstance(d, ast.Call)}
    budget = parse_size(ast.literal_eval(marks["pytest.mark.max_vram"].args[0]))
    (technique,) = ast.literal_eval(marks["pytest.mark.parametrize"].args[1])
    call = next(node for node in ast.walk(test)
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "sd_pipe")
    batch = next(ast.literal_eval(k.value) for k in call.keywords if k.arg == "batch_size")
    return technique, batch, budget


def test_the_headline_example_is_the_case_checked_on_the_sd15_estimate() -> None:
    """The first thing a newcomer reads must be true on the full-size model, not only on
    ``tiny`` where any budget of gigabytes passes. Its estimate on ``sd15`` is computed, and
    held under this budget, by tests/unit/test_estimate_sd15.py (diffusers' own threshold for
    the case); computing it again here would cost minutes on a loaded 2-core machine. So this
    test holds the README to that case: changing the example means checking the new one with
    ``--sdmem-estimate`` and changing both."""
    technique, batch, budget = headline_example()
    assert (technique, batch, budget) == ("fp16+attention_slicing+vae_slicing", 4, 4 * 10**9)
    sd15 = (ROOT / "tests" / "unit" / "test_estimate_sd15.py").read_text(encoding="utf-8")
    assert f'estimate("{technique}", batch_size={batch})' in sd15
    assert "sliced.estimated_allocated < 4e9" in sd15


def families_table() -> str:
    """docs/techniques.md's table of model families x techniques, as the registry states it:
    each technique's families, why not the others, and whether the estimator models it."""
    header = ["technique", *FAMILIES, "not on, because", "`--sdmem-estimate`"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in REGISTRY.values():
        cells = ["yes" if t.families.reason(f) is None else "**no**" for f in FAMILIES]
        by_reason: dict[str, list[str]] = {}
        for family, reason in t.families.refused:
            by_reason.setdefault(reason, []).append(family)
        why = "<br>".join(f"{', '.join(fs)}: {reason}" for reason, fs in by_reason.items())
        estimated = "modelled" if t.estimation.refused is None else "refused"
        lines.append("| " + " | ".join([f"`{t.name}`", *cells, why, estimated]) + " |")
    return "\n".join(lines) + "\n"


def test_the_families_table_is_the_registrys() -> None:
    """The table of docs/techniques.md is generated from the registry: a technique that gains
    or loses a family changes it, and this test prints the table to paste."""
    techniques = (DOCS / "techniques.md").read_text(encoding="utf-8")
    table = families_table()
    assert table in techniques, f"docs/techniques.md's families table is stale; it is:\n{table}"


def readme_families_table() -> str:
    """The README's compact table: each family, its synthetic models and the techniques it
    does not take."""
    lines = ["| family | `--sdmem-model` | every technique but |", "|---|---|---|"]
    for family in FAMILIES:
        models = ", ".join(f"`{m}`" for m in SYNTHETIC_MODELS if get_spec(m).family == family)
        refused = ", ".join(f"`{t.name}`" for t in REGISTRY.values()
                            if t.families.reason(family) is not None) or "-"
        lines.append(f"| {family} | {models} | {refused} |")
    return "\n".join(lines) + "\n"


def test_the_readme_families_table_is_the_registrys() -> None:
    table = readme_families_table()
    assert table in README, f"README's families table is stale; it is:\n{table}"


def family_examples() -> list[tuple[str, str, dict[str, int], int, float]]:
    """The README's example per family whose reason is an estimate: model, technique,
    generation overrides, budget (bytes) and the estimate it states (GB)."""
    section = README.split("One example per family", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\| `([\w-]+)` \| `([\w+()]+)`, ([^|]*) \| `\"([^\"]+)\"` \| "
                     r"estimated ([\d.]+) GB", line)
        if m is None:
            continue
        model, technique, generation, budget, stated = m.groups()
        overrides: dict[str, int] = {}
        if batch := re.search(r"batch (\d+)", generation):
            overrides["batch_size"] = int(batch.group(1))
        if (size := re.search(r"(\d+)x(\d+)", generation)) and "defaults" not in generation:
            overrides["height"], overrides["width"] = int(size.group(1)), int(size.group(2))
        if steps := re.search(r"(\d+) steps", generation):
            overrides["num_inference_steps"] = int(steps.group(1))
        rows.append((model, technique, overrides, parse_size(budget), float(stated)))
    return rows


def test_the_family_examples_hold_on_their_estimates() -> None:
    """Each family's example is true on the full-size model's estimate: the figure the README
    states is the estimator's, under the example's budget. A full-size estimate runs on meta
    tensors in seconds."""
    from pytest_sdmem.building.generation import generation_defaults
    from pytest_sdmem.estimate import estimate_generation

    examples = family_examples()
    assert {model for model, *_ in examples} >= {"sd21", "sdxl", "sd3", "flux-schnell"}
    # The figures are those of the versions the README names; other versions (CI's lowest
    # job) run other pipeline code, and only the budgets must hold there.
    versions = re.search(r"with diffusers ([\d.]+) and\s+transformers ([\d.]+)", README)
    assert versions is not None, "the README no longer names the versions of its estimates"
    same_versions = versions.groups() == (diffusers.__version__, transformers.__version__)
    for model, technique, overrides, budget, stated in examples:
        if model == "sd15":
            continue  # the headline case: test_the_headline_example_is_the_case_checked_...
        args = generation_defaults(model).with_overrides(**overrides)
        estimate = estimate_generation(model, technique, args, safety_checker=False)
        if same_versions:
            assert round(estimate.estimated_allocated / 1e9, 2) == stated, (model, technique)
        assert estimate.estimated_allocated < budget, (model, technique)
