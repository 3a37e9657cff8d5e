"""The SD 1.5 estimates behind docs/estimate-evidence.md, and the size of each modelled effect.

Not a test: it prints two markdown tables from the estimator (no GPU involved).

1. Effects: for SD 1.5 at 512x512 (``sd15``), fp32/fp16/bf16, batch 1 and 4, the size of each
   rule on the pipeline's own shapes, computed by the functions the estimate uses: the cuBLAS
   and cuBLASLt workspaces (``blas``), the cuDNN workspace of the VAE decoder's largest 3x3
   convolutions at 256x256 and 512x512 (``convolution.cudnn_workspace``), the SDPA kernels'
   extra allocations at the largest UNet call and at the VAE's single-head attention (the
   float32 log-sum-exp / cuDNN statistics, the memory-efficient kernel's float32 accumulator),
   and the attention matrix the classic processor materialises instead.
2. Estimates: ``estimate_generation("sd15", ...)`` for each dtype, batch and attention path
   (the classic processor, technique set without ``sdpa``; PyTorch SDPA, with it), with the
   safety checker (and, with ``--no-safety-checker``, without): the peak, its phase, module
   and function, and the largest block alive there.

    PYTHONPATH=. python benchmarks/estimate_table.py [--gpu NAME] [--steps 2] [--batches 1 4]

Each estimate takes 10-40 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pytest_sdmem.base.units import format_size
from pytest_sdmem.building.generation import GenerationArgs
from pytest_sdmem.estimate import estimate_generation
from pytest_sdmem.estimate.blas import blas_workspaces
from pytest_sdmem.estimate.convolution import cudnn_workspace
from pytest_sdmem.estimate.gpus import Gpu, gpu_for

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: SD 1.5's UNet attention at 512x512: the largest call (64x64 latents: 4096 queries, 8 heads,
#: head dim 40), with classifier-free guidance doubling the batch.
UNET_SEQ, UNET_HEADS = 4096, 8
#: The VAE decoder's mid-block attention: one head of 512 channels over the 64x64 latent.
VAE_SEQ, VAE_DIM = 4096, 512
#: The VAE decoder's largest convolutions: (size, in channels, out channels).
VAE_CONVS = ((256, 512, 256), (512, 256, 128), (512, 128, 128))


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def effects(gpu: Gpu, batches: list[int]) -> list[str]:
    """The effects table: one row per rule and size, one column per dtype and batch."""
    columns = [(name, dtype, b) for name, dtype in DTYPES.items() for b in batches]
    rows: list[tuple[str, list[int]]] = []
    blas = blas_workspaces(gpu).total
    rows.append(("cuBLAS + cuBLASLt workspaces (kept)", [blas for _ in columns]))
    for size, c_in, c_out in VAE_CONVS:
        sizes = []
        for _, dtype, batch in columns:
            x, y = _meta(batch, c_in, size, size, dtype=dtype), _meta(batch, c_out, size, size,
                                                                      dtype=dtype)
            w = _meta(c_out, c_in, 3, 3, dtype=dtype)
            sizes.append(cudnn_workspace(x, w, y, torch.contiguous_format, gpu))
        rows.append((f"cuDNN workspace, VAE conv {c_in}->{c_out} at {size}^2 (transient)", sizes))
    rows.append(("SDPA UNet self-attention: float32 log-sum-exp (flash/cuDNN, transient)",
                 [0 if dtype == torch.float32 else 2 * b * UNET_HEADS * UNET_SEQ * 4
                  for _, dtype, b in columns]))
    rows.append(("SDPA VAE attention: float32 accumulator (memory-efficient, head dim 512)",
                 [0 if dtype == torch.float32 else b * VAE_SEQ * VAE_DIM * 4
                  for _, dtype, b in columns]))
    rows.append(("classic processor instead: UNet attention scores, one (B,L,L) tensor",
                 [2 * b * UNET_HEADS * UNET_SEQ**2 * dtype.itemsize for _, dtype, b in columns]))
    header = "| effect | " + " | ".join(f"{n} b{b}" for n, _, b in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(format_size(s) for s in sizes) + " |"
              for name, sizes in rows]
    return lines


def estimates(gpu: Gpu, batches: list[int], steps: int, safety_checker: bool) -> list[str]:
    """The estimates table, one row per dtype, batch and attention path."""
    lines = ["| dtype | batch | attention | safety checker | estimated peak | phase | at | "
             "largest block there |", "|---|---|---|---|---|---|---|---|"]
    for name in DTYPES:
        for batch in batches:
            for attention in ("classic", "sdpa"):
                technique = "+".join(t for t in (
                    "" if name == "fp32" else name, "sdpa" if attention == "sdpa" else "") if t)
                args = GenerationArgs(num_inference_steps=steps, batch_size=batch)
                report = estimate_generation("sd15", technique or "none", args, gpu=gpu,
                                             safety_checker=safety_checker)
                place = report.peak_place
                top = str(place.largest[0]) if place and place.largest else "-"
                lines.append(
                    f"| {name} | {batch} | {attention} | {'yes' if safety_checker else 'no'} "
                    f"| {report.estimated_allocated / 1e9:.3f} GB | {report.peak_phase} "
                    f"| {place.module + ' (' + place.op + ')' if place else '-'} | {top} |")
                print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", default=None, help="card name (default: the default card)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--no-safety-checker", action="store_true",
                        help="also estimate without the safety checker")
    parser.add_argument("--effects-only", action="store_true")
    args = parser.parse_args()
    gpu = gpu_for(args.gpu)
    print(f"Card: {gpu.describe()}; SD 1.5 (sd15), 512x512, {args.steps} steps.\n")
    print("\n".join(effects(gpu, args.batches)))
    if args.effects_only:
        return
    print()
    print("\n".join(estimates(gpu, args.batches, args.steps, safety_checker=True)))
    if args.no_safety_checker:  # more rows of the same table
        print("\n".join(estimates(gpu, args.batches, args.steps, safety_checker=False)[2:]))


if __name__ == "__main__":
    main()
