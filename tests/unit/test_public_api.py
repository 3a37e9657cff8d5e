"""The package's public API: every name a test author imports resolves from ``pytest_sdmem``,
and importing the package alone stays cheap (no torch), as pytest imports it in every run of a
project that has the plugin installed."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys

import pytest

import pytest_sdmem


def test_importing_the_package_imports_no_torch() -> None:
    probe = ("import json, sys, pytest_sdmem; "
             "print(json.dumps(sorted(m for m in ('torch', 'diffusers', 'transformers', "
             "'numpy') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(done.stdout) == []


def test_every_public_name_is_its_modules_object() -> None:
    public = pytest_sdmem._PUBLIC
    assert set(pytest_sdmem.__all__) == {"__version__", *public}
    for name, module in public.items():
        assert getattr(pytest_sdmem, name) is getattr(importlib.import_module(module), name)
    assert set(public) <= set(dir(pytest_sdmem))
    namespace: dict[str, object] = {}
    exec("from pytest_sdmem import *", namespace)
    assert namespace["SdPipe"] is pytest_sdmem.SdPipe


def test_type_checkers_see_the_same_names() -> None:
    """The ``TYPE_CHECKING`` imports stand in for ``__getattr__`` for type checkers: they must
    name the same objects from the same modules."""
    tree = ast.parse(inspect.getsource(pytest_sdmem))
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    seen = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom)
            for alias in node.names}
    assert seen == pytest_sdmem._PUBLIC


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'SDPipe'"):
        pytest_sdmem.SDPipe  # noqa: B018


@pytest.mark.parametrize("name", ["SdmemLeakWarning", "SdmemMachineWarning",
                                  "SdmemBaselineWarning", "CacheWarning"])
def test_a_warning_filter_names_the_warning_by_its_public_path(name: str) -> None:
    """``-W error::pytest_sdmem.SdmemLeakWarning`` (and the ini's filterwarnings) resolve the
    class through the package's lazy names, wherever its module lives."""
    from _pytest.config import parse_warning_filter

    action, _, category, _, _ = parse_warning_filter(f"error::pytest_sdmem.{name}", escape=False)
    assert action == "error" and category is getattr(pytest_sdmem, name)
    assert issubclass(category, UserWarning)
