"""The GPU tier's time budget on paper: what ``scripts/gpu_acceptance.sh`` costs on one GPU.

Nobody has timed the tier on a GPU yet, so this adds up, per test of ``tests/techniques``, the
work it does with ``--gpu`` (SD 1.5, 25 steps, 512x512 unless the test says otherwise):
generations, single UNet calls and VAE decodes, pipeline loads, traces and compiles, and the
pairs of ``min_speedup``. Each unit of work is priced from a figure in :data:`FIGURES`, each
marked ``published`` (with its source), ``derived`` (arithmetic on published figures or on the
suite's own budgets.toml derivations), ``measured`` (on the 2-core CPU of the development
machine) or ``assumption``. Published figures are for the A100: the budget uses them as they
are, an upper bound for an H100/H200; a second column divides the GPU's share by a published
H100/A100 ratio.

    python benchmarks/gpu_time_budget.py            # per test, per file and the total
    python benchmarks/gpu_time_budget.py -k EXPR    # the same for the tests -k EXPR selects

``tests/unit/test_gpu_time_budget.py`` checks that :data:`TESTS` names exactly the tests that
``pytest --collect-only tests/techniques`` collects, so a new test cannot be left out. What a
test does is written here by hand: change the entry when the test changes (docs/gpu-time-budget.md).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

# --- figures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A number the budget uses, with where it comes from."""

    value: float
    kind: str  # published | derived | measured | assumption
    source: str
    #: Time the GPU spends (scaled by ``h100_over_a100`` for an H100), not the host.
    on_gpu: bool = False


FIGURES: dict[str, Figure] = {
    "step_fp16_sdpa_s": Figure(
        1.604 / 50, "published",
        "fal-ai/stable-diffusion-benchmarks (README): SD 1.5, 512x512, batch 1, 50 steps, "
        "diffusers with torch 2.1 and SDPA on an A100 80GB SXM: 1.604 s mean (31.19 it/s), "
        "text encoder and VAE decode included"),
    "classic_over_sdpa": Figure(
        2.69 / 1.98, "published",
        "diffusers docs, optimization/torch2.0 (benchmark table as of PR 2764): A100, batch 1, "
        "fp16: vanilla attention 2.69 s, SDPA 1.98 s per generation"),
    "fp32_over_fp16": Figure(
        9.50 / 3.61, "published",
        "diffusers memory guide's table (Titan RTX, 50 DDIM steps): fp32 9.50 s, fp16 3.61 s; "
        "on an A100/H100 fp32 convolutions run in TF32, so the real ratio is smaller"),
    "slicing_over": Figure(
        1.10, "published",
        "Lambda Labs, 'Stable Diffusion inference benchmark' blog: sliced attention costs "
        "'about 10% slower inference'"),
    "batch8_over_batch1": Figure(
        7.04 / 1.98, "published",
        "diffusers docs, optimization/torch2.0: A100, SDPA: batch 8 7.04 s, batch 1 1.98 s"),
    "batch32_over_batch1": Figure(
        26.68 / 1.98, "published",
        "diffusers docs, optimization/torch2.0: A100, SDPA: batch 32 26.68 s, batch 1 1.98 s"),
    "decode_512_fp16_s": Figure(
        0.05, "derived",
        "fal-ai/stable-diffusion-benchmarks: the full VAE costs 0.037 s more per generation "
        "than the tiny VAE (1.604 s vs 1.567 s, A100); plus the tiny VAE's own decode",
        on_gpu=True),
    "h100_over_a100": Figure(
        595 / 381, "published",
        "Stability AI's SD3 training benchmark (blog, March 2024, as reported in the press): "
        "2 nodes of 8 accelerators, batch 16 each: H100 595 images/s, A100 381 images/s; a "
        "training figure, applied here to inference GPU time only (derived)"),
    "model_offload_copies_s": Figure(
        0.69, "derived",
        "tests/techniques/budgets.toml (model_offload_vs_gpu): 5.48 GB copied per generation "
        "from pageable host memory at ~8 GB/s"),
    "sequential_offload_call_s": Figure(
        1.72 / 8, "derived",
        "the UNet's 1.72 GB of fp16 weights copied at each UNet call at ~8 GB/s (budgets.toml's "
        "pageable PCIe rate); the module hooks' own overhead is not counted"),
    "attention_tflops": Figure(
        100e12, "assumption",
        "achieved FLOP/s of SDPA's flash kernel at SD 1.5's head dimension 40 on an A100: "
        "FlashAttention-2 (Dao 2023) reports up to ~230 TFLOP/s forward at head dim 128, less "
        "at small head dims"),
    "compile_cold_s": Figure(
        90.0, "assumption",
        "torch.compile (default mode) of SD 1.5's UNet with cold inductor and triton caches "
        "on a 16-core host; a second pipeline of the same technique reuses the caches "
        "(dynamo tracing only: 'compile_warm_s')"),
    "compile_warm_s": Figure(20.0, "assumption", "dynamo re-tracing SD 1.5's UNet, caches warm"),
    "jit_trace_s": Figure(
        5.0, "assumption", "torch.jit.trace of SD 1.5's UNet: one traced forward plus graph "
        "building, on the host"),
    "construct_sd15_s": Figure(
        0.82, "measured",
        "on the development machine (2 CPU cores): sd15 with the safety checker built on the meta "
        "device, the modules' construction without initialising a weight: what building it on "
        "the GPU costs the host"),
    "init_sd15_gpu_s": Figure(
        1.0, "assumption",
        "initialising sd15's 1.37e9 weights (5.48 GB in fp32) with torch's init kernels on the "
        "GPU: memory-bound, milliseconds of bandwidth, plus launching one or two for each of its "
        "1,526 tensors; on the 2-core CPU the same initialisation took 13.8 s"),
    "copy_to_host_s": Figure(
        (5.48 + 2.74) / 8, "derived",
        "safetensors copies each tensor to the host as it saves: 5.48 GB in fp32 and 2.74 GB "
        "as the fp16 variant (cast on the GPU), at ~8 GB/s from pageable memory (budgets.toml)"),
    "write_sd15_s": Figure(
        8.22 / 1.0, "assumption",
        "the entry's 8.22 GB (fp32 and the fp16 variant) serialised and written at 1 GB/s: a "
        "local NVMe disk, or the page cache of a 128 GiB host, which takes the 8.2 GB below "
        "its writeback threshold; the development machine's virtual disk writes 0.17-0.21 GB/s "
        "(measured: dd, safetensors), which was 39 s of its 64.2 s CPU build (the rest: "
        "13.8 s of initialisation, 10.7 s of hashing one file after another)"),
    "hash_sd15_s": Figure(
        3.44 / 0.77, "derived",
        "SHA-256 of the entry's files for its marker, in parallel threads "
        "(building/pipelines/cache.py): the largest, the UNet's 3.44 GB fp32 file, at 0.77 GB/s "
        "(hashlib, one core, measured on the development machine) sets the time on a host with "
        "8 cores or more"),
    "load_fp32_s": Figure(
        0.60 + 5.48 / 8, "derived",
        "measured: sd15 from the cache in fp32 in 0.60 s (2 CPU cores); plus its 5.48 GB "
        "(safety checker included) moved to the GPU at ~8 GB/s"),
    "load_half_s": Figure(
        0.35 + 2.74 / 8, "derived",
        "measured: sd15 from the cache's fp16 variant in 0.33-0.37 s (2 CPU cores, no cast: "
        "building/pipelines/cache.py HALF_VARIANT); plus 2.74 GB moved to the GPU at ~8 GB/s; bf16 "
        "loads still cast (priced as 'load_half_cast_s')"),
    "load_half_cast_s": Figure(
        3.24 + 2.74 / 8, "derived",
        "measured: sd15 from the cache in fp16 in 3.24 s (2 CPU cores: from_pretrained casts "
        "the fp32 files), what every fp16 load cost before the cache kept an fp16 variant and "
        "what a bf16 load still costs; plus 2.74 GB moved to the GPU at ~8 GB/s"),
    "tiny_case_s": Figure(
        2.0, "assumption",
        "a case of tests/techniques/test_families.py (a tiny family: two loads from the cache "
        "and two 1-step generations at 32x32), host work at these sizes: measured 1-7 s on the "
        "development machine's 2 CPU cores with other jobs running (1-4.6 s alone), taken as "
        "2 s on a 16-core GPU host"),
    "compile_tiny_cold_s": Figure(
        30.0, "assumption",
        "torch.compile of a tiny family's denoiser (a few blocks) with cold caches on a "
        "16-core host: a third of compile_cold_s for SD 1.5's UNet"),
    "session_s": Figure(
        15.0, "assumption",
        "per pytest session: doctor check, imports (torch + diffusers: 2.6 s measured on the "
        "CPU), collection (8.7 s measured on the CPU), CUDA context and warm-up"),
}

#: ``pytest --sdmem-estimate tests/techniques``, which gpu_acceptance.sh runs beside the GPU
#: tests (it needs no GPU), measured on the development machine's 2 CPU cores: 75 s wall
#: (67.8 s in pytest; 106 s with other jobs on the machine). Not on the critical path while it
#: is shorter than the GPU session; ``sdmem calibrate`` after both reads two JSON files.
ESTIMATE_RUN_S = 75.0


def fig(name: str) -> float:
    """The value of figure ``name``."""
    return FIGURES[name].value


# --- units of work -----------------------------------------------------------------------------

#: SD 1.5 at the tier's defaults (sd_pipe with --gpu: --sdmem-steps 25, --sdmem-size 512).
STEPS = 25
SIZE = 512


@dataclass(frozen=True)
class Gen:
    """``count`` generations (or single UNet calls with ``steps=1`` and ``decode=False``)."""

    technique: str
    count: int = 1
    steps: int = STEPS
    batch: int = 1
    height: int = SIZE
    width: int = SIZE
    decode: bool = True

    def step_s(self) -> float:
        """One denoising step (classifier-free guidance: the UNet on a batch of 2)."""
        parts = set(self.technique.split("+"))
        t = fig("step_fp16_sdpa_s")
        if not parts & {"sdpa", "xformers", "seed:memory_efficient_attention"}:
            t *= fig("classic_over_sdpa")
        if not parts & {"fp16", "bf16"} and not any(p.startswith("seed:") for p in parts):
            t *= fig("fp32_over_fp16")
        if any(p.startswith("attention_slicing") for p in parts):
            t *= fig("slicing_over")
        t *= {1: 1.0, 8: fig("batch8_over_batch1"), 32: fig("batch32_over_batch1")}[self.batch]
        pixels = self.height * self.width / SIZE**2
        if pixels > 1:
            t = t * pixels + _attention_s(self.height, self.width)
        if parts & {"sequential_offload", "group_offload"}:  # every weight, every call
            t += fig("sequential_offload_call_s")
        return t

    on_gpu = True

    def seconds(self) -> float:
        t = self.steps * self.step_s()
        if self.decode and self.height * self.width > SIZE**2:
            t += fig("decode_512_fp16_s") * self.height * self.width / SIZE**2 * 1.25  # overlap
        if "model_offload" in self.technique:
            t += fig("model_offload_copies_s")
        return self.count * t


def _attention_s(height: int, width: int) -> float:
    """Self-attention of SD 1.5's UNet at ``height`` x ``width`` beyond its linear share: the
    extra FLOPs over 512x512 (4 N^2 C per layer; 5 layers at each of the latent's full, half
    and quarter sides, with 320, 640, 1280 channels; batch 2), at ``attention_tflops``."""
    n = height * width / 64
    n512 = SIZE * SIZE / 64
    flops = sum(5 * 4 * ((n / 4**lvl) ** 2 - (n512 / 4**lvl) ** 2 * n / n512) * ch
                for lvl, ch in enumerate((320, 640, 1280)))
    return 2 * flops / fig("attention_tflops")


@dataclass(frozen=True)
class Fixed:
    """Work priced by one figure: a load, a trace, a compile."""

    figure: str
    count: int = 1

    @property
    def on_gpu(self) -> bool:
        return FIGURES[self.figure].on_gpu

    def seconds(self) -> float:
        return self.count * fig(self.figure)


def pairs(mine: str, base: str, *, n: int = 4, steps: int = STEPS) -> list[Gen]:
    """``min_speedup``: the baseline's load, a warm-up pair and ``n`` timed pairs. The plan's
    first look is at 3 pairs (stats.SequentialPlan); 4 covers a claim within 15% (parity)."""
    return [Gen(mine, count=n + 1, steps=steps), Gen(base, count=n + 1, steps=steps)]


def load(technique: str, count: int = 1) -> Fixed:
    if "bf16" in technique:
        return Fixed("load_half_cast_s", count)
    half = any(p in technique for p in ("fp16", "seed:"))
    return Fixed("load_half_s" if half else "load_fp32_s", count)


UNET_CALL = {"steps": 1, "decode": False}

#: Per test (node id under tests/techniques): its work with --gpu. Latency rounds of
#: ``sd_pipe.latency()`` (runner.measure: 3 rounds at least, to a 2% interval) count 4, after
#: the test's own (cold) generation, which stands for the warm-up (``warmup=0``).
TESTS: dict[str, list[Gen | Fixed]] = {
    **{f"test_attention.py::test_memory_efficient_attention_lowers_the_unet_peak[{t}]": [
        # The classic pipeline is loaded once for its UNet step and its images.
        load(t), load("none"), Gen(t, **UNET_CALL), Gen("none", **UNET_CALL), Gen(t),
        Gen("none")]
       for t in ("attention_slicing", "attention_slicing(1)", "sdpa")},
    **{f"test_attention.py::test_xformers_and_sdpa_are_interchangeable[{a}-vs-{b}]": [
        load(a, 3), Gen(a), Gen(b), *pairs(a, b)]
       for a, b in (("fp16+xformers", "fp16+sdpa"), ("fp16+sdpa", "fp16+xformers"))},
    "test_guide_table.py::test_original_row[none]": [load("none"), Gen("none", count=1 + 4)],
    **{f"test_guide_table.py::test_row_is_faster_than_the_original[{row}]": [
        load(row), load("none"), Gen(row), *pairs(row, "none", n=3)]
       for row in ("seed:fp16", "seed:channels_last", "seed:memory_efficient_attention")},
    "test_guide_table.py::test_row_is_faster_than_the_original[seed:traced_unet]": [
        load("seed:traced_unet"), Fixed("jit_trace_s"), load("none"),
        Gen("seed:traced_unet"), *pairs("seed:traced_unet", "none", n=3)],
    "test_guide_table.py::test_row_is_faster_than_the_original[fp16+channels_last+compile]": [
        load("fp16"), Fixed("compile_cold_s"), load("none"),
        Gen("fp16"), *pairs("fp16", "none", n=3)],
    **{f"test_offload.py::test_offload_keeps_the_images[{t}]": [
        load(t, 2), Gen(t, steps=5),
        Gen("none", steps=5)]
       for t in ("sequential_offload", "model_offload", "group_offload")},
    **{f"test_offload.py::test_sequential_offload_keeps_vram_low[{t}]": [
        load(t), Gen(t, steps=5)]
       for t in ("fp16+sequential_offload", "fp16+attention_slicing(1)+sequential_offload")},
    "test_offload.py::test_model_offload_saves_vram_at_almost_no_latency[fp16+model_offload]": [
        load("fp16", 2), Gen("fp16+model_offload", steps=50),
        *pairs("fp16+model_offload", "fp16", n=3, steps=50)],
    "test_offload.py::test_group_offload_memory_order[fp16+group_offload]": [
        load("fp16", 2), Gen("fp16", count=3, **UNET_CALL)],
    "test_unet.py::test_channels_last_strides_as_the_guide_prints[channels_last]": [
        load("none", 2), Gen("none", count=2)],
    "test_unet.py::test_traced_and_compiled_unet_give_the_eager_images[jit_trace]": [
        load("none", 2), Fixed("jit_trace_s"), Gen("none", count=2)],
    "test_unet.py::test_traced_and_compiled_unet_give_the_eager_images"
    "[fp16+channels_last+compile]": [
        load("fp16", 2), Fixed("compile_warm_s"), Gen("fp16", count=2)],
    "test_vae.py::test_vae_slicing_decodes_a_batch_one_image_at_a_time[vae_slicing-batch8]": [
        # fp32 decodes: 8 sliced, 1 single, 8 unsliced.
        load("none", 2), Fixed("decode_512_fp16_s", round(17 * fig("fp32_over_fp16")))],
    "test_vae.py::test_vae_slicing_decodes_a_batch_one_image_at_a_time"
    "[fp16+vae_slicing-batch32]": [load("fp16", 2), Fixed("decode_512_fp16_s", 2 * 32 + 1)],
    # Steps: a memory claim (see the test's docstring).
    "test_vae.py::test_vae_slicing_fits_a_batch_of_32[fp16+sdpa+vae_slicing]": [
        load("fp16"), Gen("fp16+sdpa", batch=32, steps=5),
        Fixed("decode_512_fp16_s", 32)],
    # Decodes of 1024 and 1536 px, tiled and untiled, in fp32: 2 x (4 + 9) decodes of 512 px.
    "test_vae.py::test_vae_tiling_bounds_the_decode_peak[vae_tiling]": [
        load("none", 2), Fixed("decode_512_fp16_s", round(2 * 13 * 1.25 * fig("fp32_over_fp16")))],
    "test_vae.py::test_vae_tiling_is_off_up_to_the_threshold[vae_tiling]": [
        load("none", 2), Fixed("decode_512_fp16_s", round(2 * fig("fp32_over_fp16")))],
    # Steps: a memory claim (see the test's docstring).
    "test_vae.py::test_vae_tiling_fits_a_4k_image_in_8gb[fp16+sdpa+vae_tiling]": [
        load("fp16"), Gen("fp16+sdpa", steps=3, height=2224, width=3840)],
    **{f"test_weights.py::test_half_precision_halves_the_weights[{t}]": [
        load(t), load("none")] for t in ("fp16", "bf16")},
    "test_weights.py::test_layerwise_casting_stores_the_weights_below_fp16"
    "[fp16+layerwise_casting]": [load("fp16", 3), Gen("fp16", count=2, **UNET_CALL)],
}

#: test_families.py's technique sets per tiny family (its ``technique_sets``, written out): the
#: packed fp32 configuration techniques, the others alone.
_TINY_SETS = {
    "tiny-sdxl": ("sdpa+channels_last+vae_slicing+vae_tiling+layerwise_casting",
                  "attention_slicing", "fp16", "bf16"),
    "tiny-sd3": ("sdpa+vae_slicing+vae_tiling+layerwise_casting", "fp16", "bf16"),
    "tiny-flux": ("sdpa+vae_slicing+vae_tiling+layerwise_casting", "bf16"),
}
_TINY_ALONE = ("xformers", "sequential_offload", "model_offload", "group_offload",
               "sync_group_offload")
TESTS.update({
    # Skipped under --gpu (test_families.CPU_TIER_COVERS_IT): the CPU tier runs them.
    **{f"test_families.py::test_tiny_family_takes_its_techniques[{model}-{expr}]": []
       for model, sets in _TINY_SETS.items() for expr in sets},
    # What only a CUDA device runs: the offloads and xformers on each tiny family.
    **{f"test_families.py::test_tiny_family_takes_its_techniques[{model}-{expr}]": [
        Fixed("tiny_case_s")] for model in _TINY_SETS for expr in _TINY_ALONE},
    # compile: generated for Flux's transformer only (test_families.COMPILED_FAMILY_MODEL).
    "test_families.py::test_tiny_family_takes_its_techniques[tiny-flux-compile]": [
        Fixed("tiny_case_s"), Fixed("compile_tiny_cold_s")],
    "test_families.py::test_every_technique_of_the_cpu_tier_has_an_effect_check": [],
    "test_families.py::test_fp16_layerwise_casting_is_refused_on_sdxls_upcast_vae": [
        Fixed("tiny_case_s")],
    "test_families.py::test_sdxl_fp16_vae_decodes_in_fp16_with_force_upcast_off": [
        Fixed("tiny_case_s")],
    # Claims about SD 3 and Flux (sd_family): skipped in this tier's sd15 session; they run in
    # a session of --sdmem-model sd3 / flux-dev / flux-schnell, not priced here.
    "test_families.py::test_flux_runs_on_a_4gb_gpu_with_sequential_offload"
    "[bf16+sequential_offload+vae_slicing+vae_tiling]": [],
    "test_families.py::test_flux_on_the_gpu_fits_the_documented_50gb[bf16]": [],
    "test_families.py::test_sd3_in_fp16_fits_a_24gb_gpu[fp16+sdpa]": [],
})

#: Once per machine and session, outside any test: the sd15 entry built on the GPU
#: (pipelines/cache.py, ``ensure_cached(device="cuda")``) and the session's own costs.
SESSION: list[Fixed] = [Fixed(name) for name in (
    "construct_sd15_s", "init_sd15_gpu_s", "copy_to_host_s", "write_sd15_s", "hash_sd15_s",
    "session_s")]


#: ``-k`` expressions that split the tier into parts of at most 4 minutes each on A100 figures,
#: each part on its own cold machine (its session and sd15 build included); together they run
#: every test once. tests/unit/test_gpu_time_budget.py checks both.
PARTS = (
    "guide_table and not compile",
    "(compile or test_unet) and not test_families",
    "not guide_table and not test_unet and not test_families",
    "test_families",
)
PART_LIMIT_S = 240.0


# --- report ------------------------------------------------------------------------------------


def test_seconds(node: str, gpu_speed: float = 1.0) -> float:
    """The budget of one test in seconds, with the GPU's work ``gpu_speed`` times faster."""
    return sum(item.seconds() / (gpu_speed if item.on_gpu else 1.0) for item in TESTS[node])


def selected(expr: str | None) -> list[str]:
    """The tests that ``-k expr`` selects, matched as pytest matches names: a keyword matches
    a case-insensitive substring of the test's name (parameters included), its file's name or
    its folders' (markers, which pytest's -k also matches, are not known here)."""
    if expr is None:
        return list(TESTS)
    from _pytest.mark.expression import Expression

    compiled = Expression.compile(expr)
    out = []
    for node in TESTS:
        file, name = node.split("::")
        words = (name, file, "techniques", "tests")
        out.append((node, compiled.evaluate(
            lambda kw, *_a, words=words, **_k: any(kw.lower() in w.lower() for w in words))))
    return [node for node, keep in out if keep]


def report(nodes: Iterable[str]) -> tuple[str, float]:
    """The per-test and per-file table of ``nodes`` plus one session on a cold machine (the sd15
    build included), for A100 figures and for an H100; and the A100 total, the upper bound."""
    nodes = list(nodes)
    h100 = fig("h100_over_a100")
    lines = [f"{'A100 s':>8} {'H100 s':>8}  test"]
    per_file: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for node in nodes:
        a100, fast = test_seconds(node), test_seconds(node, h100)
        per_file[node.split("::")[0]][0] += a100
        per_file[node.split("::")[0]][1] += fast
        lines.append(f"{a100:8.1f} {fast:8.1f}  {node}")
    lines.append("")
    for file, (a100, fast) in per_file.items():
        lines.append(f"{a100:8.1f} {fast:8.1f}  {file}")
    session = sum(item.seconds() for item in SESSION)
    lines.append(f"{session:8.1f} {session:8.1f}  session: sd15 built on the GPU (cold machine), "
                 "imports, collection, CUDA warm-up")
    total = sum(a for a, _ in per_file.values()) + session
    total_h100 = sum(f for _, f in per_file.values()) + session
    lines.append(f"{total:8.1f} {total_h100:8.1f}  total: {total / 60:.2f} min on A100 figures "
                 f"(the upper bound), {total_h100 / 60:.2f} min on H100 figures")
    lines.append(f"{ESTIMATE_RUN_S:8.1f} {ESTIMATE_RUN_S:8.1f}  beside it (CPU, not added): the "
                 "estimate run of gpu_acceptance.sh")
    return "\n".join(lines), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="expr", help="pytest -k expression selecting tests")
    parser.add_argument("--figures", action="store_true", help="list the figures and sources")
    parser.add_argument("--parts", action="store_true",
                        help="one line per part: its seconds on A100 figures, a tab, its -k "
                             "expression (scripts/gpu_first_contact.sh reads them)")
    args = parser.parse_args(argv)
    if args.parts:
        for expr in PARTS:
            print(f"{report(selected(expr))[1]:.0f}\t{expr}")
        return 0
    if args.figures:
        for name, f in FIGURES.items():
            print(f"{name} = {f.value:.4g} ({f.kind}): {f.source}")
        return 0
    text, _ = report(selected(args.expr))
    print(text)
    if args.expr is None:
        print("\nparts (-k), each on a cold machine:")
        for expr in PARTS:
            _, part = report(selected(expr))
            print(f"{part:8.1f}  -k {expr!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
