"""What each convolution of a VAE decode allocates inside the call, measured, next to the
estimator's cuDNN workspace rule.

Not a test. The estimator cannot read from torch's sources which cuDNN engine its heuristics
rank first, so its workspace rule (``estimate.convolution.cudnn_workspace``: NHWC/KRSC copies
of input, weight and output for a tensor-core convolution in NCHW) is a choice, and the largest
uncertainty of the SDPA estimates (docs/estimate-evidence.md, "The cuDNN workspace: what is
known"). On a GPU this script settles it: for every ``nn.Conv2d`` call of the decoder it
measures what the call allocates beyond its output (the peak inside the call, minus what was
allocated before it, minus the output's bytes), which on CUDA is the plan's workspace
(``run_conv_plan`` allocates it through the caching allocator), and prints it beside the
model's figure and the input-and-weight-only alternative.

    PYTHONPATH=. python benchmarks/cudnn_workspaces.py --device cuda [--out DIR]

It builds the model's VAE from its config with random weights (the values do not change what
is allocated) and decodes one batch of latents per dtype and batch size. On the CPU it runs the
same measurement, where a convolution allocates nothing beyond its output: that is what the
unit test checks, with a convolution that does allocate.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_sdmem.base.tables import Row, markdown_table
from pytest_sdmem.building.pipelines import get_spec
from pytest_sdmem.estimate.convolution import cudnn_memory_format, cudnn_workspace
from pytest_sdmem.estimate.gpus import Gpu, gpu_for
from pytest_sdmem.measuring.memory import MemoryBackend, get_backend

sys.path.insert(0, str(Path(__file__).parent))
from estimate_vs_gpu import positive  # a sibling script, not a package

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COLUMNS = ("dtype", "batch", "convolution", "layout", "input", "weight", "output", "measured",
           "model", "input + weight")


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@dataclass(frozen=True)
class ConvReading:
    """One convolution call: its tensors' bytes, what it allocated beyond its output
    (``measured``), and the two candidate rules' figures for the same tensors."""

    module: str
    dtype: str
    batch: int
    input_shape: list[int]
    weight_shape: list[int]
    output_shape: list[int]
    layout: str
    input_bytes: int
    weight_bytes: int
    output_bytes: int
    measured: int
    model: int
    input_and_weight: int


@contextmanager
def reading_convolutions(root: nn.Module, backend: MemoryBackend, gpu: Gpu, dtype: str,
                         batch: int) -> Iterator[list[ConvReading]]:
    """While active, every ``nn.Conv2d`` call under ``root`` appends a :class:`ConvReading`.

    The peak window of ``backend`` is reset before each call, so the reading is the call's
    own; nothing else may measure on the backend meanwhile."""
    readings: list[ConvReading] = []
    before: dict[str, int] = {}
    names = {module: name for name, module in root.named_modules()}

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        before[names[module]] = backend.allocated()
        backend.reset_peak()

    def post(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        name, (input,), weight = names[module], args, module.weight
        layout = cudnn_memory_format(input, weight)
        model = cudnn_workspace(input, weight, output, layout, gpu)
        readings.append(ConvReading(
            module=name, dtype=dtype, batch=batch, input_shape=list(input.shape),
            weight_shape=list(weight.shape), output_shape=list(output.shape),
            layout="channels_last" if layout == torch.channels_last else "contiguous",
            input_bytes=_nbytes(input), weight_bytes=_nbytes(weight),
            output_bytes=_nbytes(output),
            measured=backend.peak_allocated() - before[name] - _nbytes(output),
            model=model,
            input_and_weight=_nbytes(input) + _nbytes(weight) if model else 0,
        ))

    handles = [handle for module in names if isinstance(module, nn.Conv2d)
               for handle in (module.register_forward_pre_hook(pre),
                              module.register_forward_hook(post))]
    backend.activate()
    try:
        yield readings
    finally:
        backend.deactivate()
        for handle in handles:
            handle.remove()


def probe(run: Callable[[], object], root: nn.Module, device: str, dtype: str,
          batch: int) -> list[ConvReading]:
    """Run ``run()`` (a forward of ``root`` under no_grad) and read every convolution."""
    backend = get_backend(device)
    gpu = gpu_for(backend.device_name if device.startswith("cuda") else None)
    with reading_convolutions(root, backend, gpu, dtype, batch) as readings:
        run()
    return readings


def decode_readings(model: str, device: str, size: int, dtype: str,
                    batch: int) -> list[ConvReading]:
    """Every convolution of ``model``'s VAE decoding a ``batch`` of ``size``-pixel images."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**get_spec(model).vae).to(device=device, dtype=DTYPES[dtype]).eval()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(batch, vae.config.latent_channels, size // factor, size // factor,
                          device=device, dtype=DTYPES[dtype])
    with torch.no_grad():
        readings = probe(partial(vae.decode, latents), vae, device, dtype, batch)
    # The next decode starts from an empty device: this one's blocks go back to the driver.
    del vae, latents
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return readings


def table(readings: list[ConvReading], min_bytes: int) -> list[str]:
    """A markdown table of the readings whose input is at least ``min_bytes``."""
    def mb(n: int) -> str:
        return f"{n / 1e6:.1f}"

    return markdown_table(COLUMNS, (
        Row((r.dtype, str(r.batch),
             f"{r.module} {tuple(r.input_shape)} to {tuple(r.output_shape)}", r.layout,
             mb(r.input_bytes), mb(r.weight_bytes), mb(r.output_bytes), mb(r.measured),
             mb(r.model), mb(r.input_and_weight)), failed=False)
        for r in readings if r.input_bytes >= min_bytes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="sd15")
    parser.add_argument("--size", type=positive, default=512)
    parser.add_argument("--batches", type=positive, nargs="+", default=[1, 4])
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    parser.add_argument("--min-mb", type=float, default=50.0,
                        help="table only convolutions whose input is at least this (MB)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write cudnn_workspaces.jsonl and .md there")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("cudnn_workspaces: no CUDA device here; pass --device cpu to try the probe",
              file=sys.stderr)
        return 2
    readings = [reading for dtype in args.dtypes for batch in args.batches
                for reading in decode_readings(args.model, args.device, args.size, dtype, batch)]
    header = [f"# What {args.model}'s VAE convolutions allocate beyond their output, MB "
              f"({args.size}x{args.size}, {args.device}"
              + (f": {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}, "
                 f"cuDNN {torch.backends.cudnn.version()}" if args.device.startswith("cuda")
                 else "") + ")", "",
              "measured: peak inside the call - allocated before it - output; model: "
              "estimate.convolution.cudnn_workspace; written by benchmarks/cudnn_workspaces.py.",
              ""]
    text = "\n".join(header + table(readings, int(args.min_mb * 1e6))) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cudnn_workspaces.md").write_text(text)
        with open(args.out / "cudnn_workspaces.jsonl", "w") as jsonl:
            for reading in readings:
                jsonl.write(json.dumps(asdict(reading)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
