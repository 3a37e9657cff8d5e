"""benchmarks/cudnn_workspaces.py, the GPU probe that settles the estimator's cuDNN workspace
rule, measures what a convolution call allocates beyond its output: on the CPU a convolution
allocates nothing there, and one that does is read to the byte."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cudnn_workspaces  # noqa: E402


class ScratchConv(nn.Conv2d):
    """A convolution that allocates a scratch buffer inside its call, as cuDNN's plan does."""

    SCRATCH = 3 * 2**20

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(self.SCRATCH, dtype=torch.uint8)
        out = super().forward(input)
        del scratch
        return out


def test_a_plain_convolution_allocates_only_its_output_on_the_cpu() -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        [reading] = cudnn_workspaces.probe(lambda: conv(x), conv, "cpu", "fp32", 2)
    assert reading.measured == 0
    assert reading.input_bytes == 2 * 8 * 32 * 32 * 4
    assert reading.output_bytes == 2 * 16 * 32 * 32 * 4
    assert reading.weight_bytes == 16 * 8 * 9 * 4
    # The model's rule for an fp32 NCHW convolution on the default card (TF32 tensor cores):
    # the copies of input, weight and output; the alternative: input and weight only.
    assert reading.layout == "contiguous"
    assert reading.model == reading.input_bytes + reading.weight_bytes + reading.output_bytes
    assert reading.input_and_weight == reading.input_bytes + reading.weight_bytes


def test_what_a_convolution_allocates_inside_its_call_is_read_per_call() -> None:
    model = nn.Sequential(ScratchConv(4, 4, 1), nn.Conv2d(4, 4, 1))
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        readings = cudnn_workspaces.probe(lambda: model(x), model, "cpu", "fp32", 1)
    assert [(r.module, r.measured) for r in readings] == [("0", ScratchConv.SCRATCH), ("1", 0)]


def test_channels_last_convolutions_get_no_workspace_in_the_model() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(1, 8, 16, 16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        [reading] = cudnn_workspaces.probe(lambda: conv(x), conv, "cpu", "fp16", 1)
    assert (reading.layout, reading.model, reading.input_and_weight) == ("channels_last", 0, 0)


def test_the_tiny_decode_is_read_and_written(tmp_path: Path) -> None:
    assert cudnn_workspaces.main(["--device", "cpu", "--model", "tiny", "--size", "64",
                                  "--batches", "1", "--dtypes", "fp32", "--min-mb", "0",
                                  "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "cudnn_workspaces.jsonl").open()]
    assert rows and all(row["measured"] == 0 for row in rows)
    assert any(row["module"] == "decoder.conv_out" for row in rows)
    assert "decoder.conv_out" in (tmp_path / "cudnn_workspaces.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_no_cuda_is_a_usage_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert cudnn_workspaces.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--batches", "0"], ["--size", "x"], ["--dtypes", "fp8"]])
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cudnn_workspaces.main(["--device", "cpu", *argv])
    assert exit_info.value.code == 2
