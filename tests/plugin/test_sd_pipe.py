"""The ``sd_pipe`` fixture end to end: technique selection, ids, skips, errors, records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_techniques_select_skip_and_fail_at_collection(
    pytester: pytest.Pytester, model_cache: Path
) -> None:
    pytester.makepyfile(
        """
        import numpy as np
        import pytest

        TECHNIQUES = ["none", "vae_slicing+fp16", "sequential_offload", "bogus",
                      "model_offload+sequential_offload", "attention_slicing+xformers"]

        @pytest.mark.parametrize("sd_pipe", TECHNIQUES, indirect=True)
        def test_generate(sd_pipe):
            images = sd_pipe(batch_size=2)
            assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()
            assert sd_pipe.device == "cpu"

        @pytest.mark.sd_technique("channels_last")
        def test_marked(sd_pipe):
            assert sd_pipe.technique.expr == "channels_last"
            assert sd_pipe.pipe.unet.conv_out.weight.stride()[1] == 1

        def test_default_is_none(sd_pipe):
            assert sd_pipe.technique.expr == "none"
        """
    )
    result = pytester.runpytest(f"--sdmem-cache-dir={model_cache}", "-rA", "-v",
                                "--sdmem-json=r.json")
    result.assert_outcomes(passed=4, skipped=1, errors=3)
    result.stdout.fnmatch_lines_random([
        # Test ids show the technique, in canonical order whatever the order written.
        "*test_generate[[]vae_slicing+fp16[]] PASSED*",
        "SKIPPED [[]1[]] *sequential_offload needs a CUDA device: run with --gpu*",
        "*test_generate[[]bogus[]]*unknown technique 'bogus'*",
        "*test_generate[[]model_offload+sequential_offload[]]*offload*",
        "*ERROR at setup of test_generate[[]attention_slicing+xformers[]]*",
        "cannot combine 'attention_slicing+xformers'*2053*",
    ])
    records = {r["nodeid"].split("::")[1]: r for r in json.loads(
        (pytester.path / "r.json").read_text())["results"]}
    assert records["test_generate[vae_slicing+fp16]"]["technique"] == "fp16+vae_slicing"
    assert records["test_generate[vae_slicing+fp16]"]["model"] == "tiny"
    assert records["test_marked"]["technique"] == "channels_last"
    # The pipeline's weights are loaded in setup; the call's absolute peak includes them.
    mem = records["test_default_is_none"]["memory"]
    assert mem is not None and mem["start_allocated_bytes"] > 0


def test_a_missing_model_is_one_clear_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile("def test_x(sd_pipe):\n    sd_pipe()\n")
    missing = tmp_path / "no-such-model"
    result = pytester.runpytest(f"--sdmem-model={missing}", "-rA")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{missing}*"])
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*During handling of the above exception*")
    # Once in the error's report, once in the short summary (which does not repeat the id).
    assert sum(f"model '{missing}'" in line for line in result.outlines) == 2
    result.stdout.fnmatch_lines([f"ERROR *test_x - Failed: model '{missing}'*"])


def test_a_technique_the_family_refuses_is_skipped_or_an_error(pytester: pytest.Pytester,
                                                               model_cache: Path) -> None:
    """Issue 15: a technique that cannot apply to the session's model family is never a silent
    no-op. Parametrized (a suite run against any model), it is skipped at collection with the
    registry's reason; asked for by name in a marker, it is an error of that test. Nothing is
    loaded for either: the decision is the registry's, before the fixture."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("sd_pipe", ["fp16", "channels_last+vae_slicing"],
                                 indirect=True)
        def test_parametrized(sd_pipe):
            raise AssertionError("a refused technique must not run")

        @pytest.mark.sd_technique("attention_slicing")
        def test_marked(sd_pipe):
            raise AssertionError("a refused technique must not run")

        @pytest.mark.min_speedup(1.0, baseline="jit_trace")
        def test_baseline(sd_pipe):
            raise AssertionError("a refused baseline must not run")
        """
    )
    result = pytester.runpytest(f"--sdmem-cache-dir={model_cache}", "--sdmem-model=tiny-flux",
                                "-rA")
    result.assert_outcomes(skipped=2, errors=2)
    result.stdout.fnmatch_lines_random([
        "SKIPPED [[]1[]] *fp16 does not apply to flux models: *bfloat16*Running FP16 inference*",
        "SKIPPED [[]1[]] *channels_last does not apply to flux models: *transformer*",
        "*sd_technique 'attention_slicing' cannot run on --sdmem-model tiny-flux: "
        "attention_slicing does not apply to flux models*",
        "*min_speedup baseline 'jit_trace' cannot run on --sdmem-model tiny-flux*",
    ])
