"""Option values: defaults per device, and clear usage errors for what cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_sdmem.gate.settings import SettingsError, build_settings
from pytest_sdmem.plugin.options import OPTIONS

CACHE = Path("/tmp/cache")


def no_cuda() -> tuple[bool, int]:
    return False, 0


def two_gpus() -> tuple[bool, int]:
    return True, 2


def test_cpu_defaults() -> None:
    s = build_settings({}, CACHE, no_cuda)
    assert (s.device, s.model, s.steps, s.image_size, s.gpu) == ("cpu", "tiny", None, None, False)
    assert s.cache_dir == CACHE and s.json_path is None and s.leak_threshold == 4_000_000


def test_gpu_defaults_and_device_index() -> None:
    s = build_settings({"gpu": True}, CACHE, two_gpus)
    assert (s.device, s.model, s.steps, s.image_size) == ("cuda:0", "sd15", None, None)
    assert build_settings({"gpu": True, "sdmem_device": "cuda"}, CACHE, two_gpus).device == "cuda:0"
    with pytest.raises(SettingsError, match="only 2 CUDA device"):
        build_settings({"gpu": True, "sdmem_device": "cuda:2"}, CACHE, two_gpus)


def test_gpu_without_cuda_names_the_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(SettingsError) as err:
        build_settings({"gpu": True}, CACHE, no_cuda)
    assert "torch.cuda.is_available() = False" in str(err.value)
    assert "CUDA_VISIBLE_DEVICES=" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"sdmem_device": "tpu"}, "expected cpu, cuda or cuda:N"),
        ({"sdmem_device": "meta"}, "expected cpu, cuda or cuda:N"),
        ({"sdmem_device": "cuda:0"}, "add --gpu"),
        ({"sdmem_steps": "0"}, "--sdmem-steps='0'"),
        ({"sdmem_size": "abc"}, "--sdmem-size='abc'"),
        ({"sdmem_size": "100"}, "multiple of 8"),
        ({"sdmem_max_time": "-1"}, "--sdmem-max-time"),
        ({"sdmem_leak_threshold": "lots"}, "--sdmem-leak-threshold"),
    ],
)
def test_bad_values(raw: dict, fragment: str) -> None:
    """A value is converted once, by its option's kind, then the settings are built from it:
    a bad value is refused at either step, naming the option."""
    options = {opt.dest: opt for opt in OPTIONS}
    with pytest.raises(SettingsError) as err:
        build_settings({dest: options[dest].convert(v) for dest, v in raw.items()}, CACHE,
                       no_cuda)
    assert fragment in str(err.value)


def test_each_xdist_worker_gets_its_own_gpu() -> None:
    from pytest_sdmem.gate.settings import Workers

    assert build_settings({"gpu": True}, CACHE, two_gpus, Workers(2, 1)).device == "cuda:1"
    with pytest.raises(SettingsError, match="-n 3 starts more pytest-xdist workers than the 2"):
        build_settings({"gpu": True}, CACHE, two_gpus, Workers(3))
    shared = build_settings({"gpu": True, "sdmem_share_gpu": True}, CACHE, two_gpus,
                            Workers(3, 2))
    assert shared.device == "cuda:0" and shared.share_gpu
    # On the CPU, workers share the host: nothing to place.
    assert build_settings({}, CACHE, no_cuda, Workers(2, 1)).device == "cpu"


def test_estimate_for_names_a_gpu_only_for_an_estimate() -> None:
    s = build_settings({"sdmem_estimate": True, "sdmem_estimate_for": " NVIDIA L4 "}, CACHE,
                       no_cuda)
    assert s.estimate_for == "NVIDIA L4"
    assert build_settings({"sdmem_estimate": True}, CACHE, no_cuda).estimate_for is None
    with pytest.raises(SettingsError, match=r"--sdmem-estimate-for='NVIDIA L4' .* needs "
                                            r"--sdmem-estimate"):
        build_settings({"sdmem_estimate_for": "NVIDIA L4"}, CACHE, no_cuda)


def test_estimate_mode_defaults_and_conflicts() -> None:
    s = build_settings({"sdmem_estimate": True}, CACHE, no_cuda)
    assert (s.estimate, s.model, s.device) == (True, "sd15", "cpu")
    assert (s.steps, s.image_size) == (None, None)
    assert s.safety_checker, "sd15 has its safety checker, as diffusers' thresholds were measured"
    assert not build_settings({}, CACHE, no_cuda).safety_checker, "tiny has none"
    assert not build_settings({"sdmem_estimate": True, "sdmem_no_safety_checker": True}, CACHE,
                              no_cuda).safety_checker
    with pytest.raises(SettingsError, match="--sdmem-estimate estimates the CUDA peak without"):
        build_settings({"sdmem_estimate": True, "gpu": True}, CACHE, two_gpus)
