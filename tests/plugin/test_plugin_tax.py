"""Installing the plugin must cost nothing in a pytest run that does not use it.

torch and diffusers take seconds and hundreds of MB to import; a project that has pytest-sdmem
installed but runs unrelated tests must not pay that. Checked in a fresh interpreter, because
this process has long imported both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers")

PROBE = textwrap.dedent("""
    import json, sys
    import pytest
    import pytest_sdmem.plugin.hooks  # what the pytest11 entry point imports
    after_import = sorted(m for m in {heavy!r} if m in sys.modules)
    code = pytest.main(["-q", "-p", "no:cacheprovider", {args}])
    print(json.dumps({{"after_import": after_import, "exit": int(code),
                      "loaded": "pytest_sdmem.plugin.hooks" in sys.modules,
                      "after_run": sorted(m for m in {heavy!r} if m in sys.modules)}}))
""")


def _probe(tmp_path: Path, *args: str) -> dict[str, object]:
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
    argv = ", ".join(repr(a) for a in (str(tmp_path), *args))
    code = PROBE.format(heavy=HEAVY, args=argv)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_unused_plugin_imports_neither_torch_nor_diffusers(tmp_path: Path) -> None:
    seen = _probe(tmp_path)
    assert seen["loaded"], "the plugin was not loaded: the check would prove nothing"
    assert seen["exit"] == 0
    assert seen["after_import"] == []
    assert seen["after_run"] == []
