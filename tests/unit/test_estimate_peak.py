"""Where the peak is: module, function and the largest live blocks, on meta tensors."""

from __future__ import annotations

import json

import torch

from pytest_sdmem.estimate.device import SimulatedDevice
from pytest_sdmem.estimate.peak import Locator


def test_the_peak_names_its_module_function_and_largest_tensors() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.GELU(),
                                torch.nn.Linear(1024, 16)).to("meta")
    locator = Locator({"net": model})
    with SimulatedDevice() as device, torch.no_grad():
        device.where = locator.where
        device.place(model.parameters())
        weights = device.allocated
        device.reset_peak()
        with locator:
            x = torch.empty(8, 64, device="meta")
            model(x)
    place = device.peak_place
    assert place is not None and place.allocated == device.allocator.peak_allocated
    # The GELU's output (8 x 1024 x 4 = 32 KiB) is made while the first Linear's is alive.
    assert (place.module, place.op) == ("net.1", "gelu")
    assert place.weights == weights
    assert [(t.bytes, t.tensor, t.made_in) for t in place.largest[:2]] == [
        (32_768, "(8, 1024) float32", "net.0 (linear)"),
        (32_768, "(8, 1024) float32", "net.1 (gelu)"),
    ]
    data = json.loads(json.dumps(place.to_dict()))
    assert data["module"] == "net.1" and data["weights_bytes"] == weights
    assert data["largest"][0]["tensor"] == "(8, 1024) float32"
    assert "peak in pipeline, net.1 calling gelu" in str(place)


def test_library_blocks_are_named_and_weights_are_not_listed() -> None:
    weight = torch.empty(4096, device="meta")  # made before the device, as the weights are
    with SimulatedDevice() as device:
        device.place([weight])
        device.reset_peak()
        block = device.allocate(2**20, "cuBLAS workspace")
        place = device.peak_place
        assert place is not None and place.weights == 16_384
        assert [t.tensor for t in place.largest] == ["cuBLAS workspace"]
        device.free(block)
        assert device.allocated == 16_384
