"""The registry: one :class:`Technique` entry per technique of the diffusers memory guide, and
the guide's cumulative rows as presets.

Adding a technique is adding one entry to ``_ENTRIES``: its apply function (from the room of
what it changes: ``weights``, ``attention``, ``vae``, ``offload``, ``compile``), its
requirements, its conflicts (with the reason), its output tolerance, the claim it carries and
how the estimator treats it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pytest_sdmem.building.techniques.attention import (
    SLICE_ACCEPTED,
    SliceAttention,
    apply_classic_attention,
    apply_sdpa,
    apply_xformers,
    parse_slice_size,
)
from pytest_sdmem.building.techniques.compile import (
    apply_compile,
    apply_jit_trace,
    compiler_probe,
)
from pytest_sdmem.building.techniques.offload import (
    OffloadGroups,
    apply_model_offload,
    apply_sequential_offload,
)
from pytest_sdmem.building.techniques.technique import (
    BFLOAT,
    ESTIMATED,
    FP8_STORAGE,
    HALF,
    REORDERED,
    TILED,
    Conflict,
    Estimation,
    Families,
    Parameter,
    Stage,
    Technique,
)
from pytest_sdmem.building.techniques.vae import apply_vae_slicing, apply_vae_tiling
from pytest_sdmem.building.techniques.weights import (
    CastWeights,
    apply_channels_last,
    apply_layerwise_casting,
)

_OFFLOAD_REPLACES = (
    "each enable_*_cpu_offload call first removes the hooks of the other (remove_all_hooks), so "
    "one offload mode silently replaces the other"
)
_GROUP_VS_ACCELERATE = (
    "diffusers refuses group offloading on a pipeline with accelerate offload hooks and "
    "accelerate offloading on a group-offloaded one"
)
_HOOKS_NOT_TRACED = (
    "a traced graph does not run module hooks, and {0} works through hooks around each module's "
    "forward"
)


def _traced_hooks(name: str) -> Conflict:
    return Conflict(name, _HOOKS_NOT_TRACED.format(name))


def _unet_side(reason: str) -> Families:
    """A technique of the UNet families (SD 1.x, 2.x, SDXL): SD 3 and Flux denoise with a
    transformer, and ``reason`` says what that leaves the technique to act on."""
    why = f"SD 3 and Flux denoise with a transformer, not a UNet: {reason}"
    return Families.refusing({"sd3": why, "flux": why})


#: diffusers' Flux documentation ("Running FP16 inference",
#: https://huggingface.co/docs/diffusers/api/pipelines/flux#running-fp16-inference).
_FLUX_FP16 = (
    "Flux is published and run in bfloat16; in float16 some activations of its text encoders "
    "must be clipped, so the images differ from bf16's and fp32's (diffusers' Flux docs, "
    "'Running FP16 inference'): use bf16, which halves the weights the same way"
)


_ENTRIES: tuple[Technique, ...] = (
    Technique(
        name="none",
        summary="fp32 weights and the classic attention processor (full attention matrix)",
        claim="the guide's 'original' row: 9.50 s for SD 1.5, 512x512, 50 DDIM steps on a "
              "Titan RTX; the baseline of every speed-up",
        order=0, stage=Stage.CONFIGURE, apply=apply_classic_attention, dtype=torch.float32,
        notes="Not combinable: every other set starts from it (fp32 unless fp16/bf16, classic "
              "attention unless sdpa/xformers).",
        estimation=ESTIMATED,
    ),
    Technique(
        name="fp16",
        summary="weights and activations in float16 (loaded with torch_dtype=torch.float16)",
        claim="2.63x faster than fp32 (3.61 s), and half the weights' memory",
        order=10, stage=Stage.CONFIGURE, apply=CastWeights(torch.float16), dtype=torch.float16,
        output_tolerance=HALF,
        conflicts=(Conflict("bf16", "a pipeline is loaded in one dtype: fp16 or bf16"),),
        notes="SDXL's VAE is published with force_upcast: in an fp16 pipeline it decodes in "
              "fp32 (StableDiffusionXLPipeline casts it up for the decode and back after), "
              "unless its config sets force_upcast to False (an fp16-safe VAE).",
        families=Families.refusing({"flux": _FLUX_FP16}),
        estimation=ESTIMATED,
    ),
    Technique(
        name="bf16",
        summary="weights and activations in bfloat16 (loaded with torch_dtype=torch.bfloat16)",
        claim="half the weights' memory, like fp16, with fp32's range",
        order=11, stage=Stage.CONFIGURE, apply=CastWeights(torch.bfloat16), dtype=torch.bfloat16,
        output_tolerance=BFLOAT,
        estimation=ESTIMATED,
    ),
    Technique(
        name="sdpa",
        summary="PyTorch scaled_dot_product_attention (AttnProcessor2_0) in the UNet and VAE",
        claim="memory-efficient attention without xFormers: on PyTorch >= 2 as fast as xFormers; "
              "the last row of the guide's table (x3.61 cumulative)",
        order=20, stage=Stage.CONFIGURE, apply=apply_sdpa, min_torch="2.0", sets_attention=True,
        output_tolerance=REORDERED,
        conflicts=(Conflict("xformers", "both set the attention processor: the one applied "
                                        "last silently replaces the other"),),
        estimation=ESTIMATED,
    ),
    Technique(
        name="xformers",
        summary="xFormers memory-efficient attention "
                "(pipe.enable_xformers_memory_efficient_attention())",
        claim="x3.61 over fp32 cumulative in the guide (2.63 s); on PyTorch >= 2 no faster "
              "than sdpa",
        order=21, stage=Stage.CONFIGURE, apply=apply_xformers, requires_cuda=True,
        requires_packages=("xformers",), sets_attention=True, output_tolerance=REORDERED,
        estimation=Estimation(
            refused="xFormers' kernels are not modelled (only PyTorch's SDPA kernels are); "
                    "estimate 'sdpa' for memory-efficient attention"),
    ),
    Technique(
        name="attention_slicing",
        summary="attention computed a slice of heads at a time (pipe.enable_attention_slicing); "
                "attention_slicing(N) slices N heads, attention_slicing(max) one",
        claim="peak memory of SD 1.5 fp16 at 512x512 below 3.75e9 bytes (diffusers' own test); "
              "with sequential offload and slices of 1, below 2.8e9",
        order=22, stage=Stage.CONFIGURE, apply=SliceAttention("auto"),
        output_tolerance=REORDERED,
        parameter=Parameter(
            accepted=SLICE_ACCEPTED,
            parse=parse_slice_size, make=SliceAttention, default="auto",
        ),
        conflicts=(
            Conflict("xformers", "slicing installs its own attention processor and silently "
                                 "replaces xFormers (diffusers issue 2053)"),
            Conflict("sdpa", "slicing installs its own attention processor and silently replaces "
                             "SDPA; diffusers warns that slicing SDPA only slows it down"),
        ),
        families=_unet_side("enable_attention_slicing slices the attention of a UNet, and the "
                            "transformers' joint-attention processors have no sliced form, so "
                            "it would change nothing"),
        estimation=ESTIMATED,
    ),
    Technique(
        name="channels_last",
        summary="UNet weights in channels-last memory format "
                "(pipe.unet.to(memory_format=torch.channels_last))",
        claim="x2.88 over fp32 with fp16 (3.30 s); SD's unet.conv_out weight stride goes from "
              "(2880, 9, 3, 1) to (2880, 1, 960, 320)",
        order=30, stage=Stage.CONFIGURE, apply=apply_channels_last, output_tolerance=REORDERED,
        families=_unet_side("channels_last is the layout of the UNet's 4-d convolution "
                            "weights, and a transformer's layers are linear over tokens"),
        estimation=ESTIMATED,
    ),
    Technique(
        name="vae_slicing",
        summary="the VAE decodes a batch one image at a time (pipe.vae.enable_slicing())",
        claim="a batch of 32 images decodes within memory; batches get slightly faster and a "
              "single image no slower",
        order=40, stage=Stage.CONFIGURE, apply=apply_vae_slicing,
        estimation=ESTIMATED,
    ),
    Technique(
        name="vae_tiling",
        summary="the VAE works in overlapping tiles (pipe.vae.enable_tiling())",
        claim="a 3840x2224 image (20 UniPC steps) fits in 8 GB of VRAM; tiles may differ in "
              "tone but show no seams; SD's VAE does not tile images up to 512x512",
        order=41, stage=Stage.CONFIGURE, apply=apply_vae_tiling, output_tolerance=TILED,
        estimation=ESTIMATED,
    ),
    Technique(
        name="layerwise_casting",
        summary="denoiser (UNet or transformer) and VAE weights stored in float8 e4m3, each "
                "layer upcast to the pipeline's dtype for its forward (enable_layerwise_casting)",
        claim="weight memory below fp16's (diffusers: fp8 storage < fp16 weights)",
        order=45, stage=Stage.CONFIGURE, apply=apply_layerwise_casting, min_torch="2.1",
        output_tolerance=FP8_STORAGE,
        notes="The text encoders (transformers models) have no enable_layerwise_casting and "
              "keep their dtype; diffusers skips norm layers by default. With fp16 on a VAE "
              "that the pipeline upcasts for decoding (SDXL's force_upcast) it is refused at "
              "apply: the hooks would compute in fp16 on the upcast fp32 inputs.",
        estimation=ESTIMATED,
    ),
    Technique(
        name="sequential_offload",
        summary="sub-modules onloaded to the GPU one at a time "
                "(pipe.enable_sequential_cpu_offload()), never .to('cuda') first",
        claim="under 3 GB of VRAM (2.8e9 bytes with attention_slicing(1)), much slower",
        order=50, stage=Stage.PLACE, apply=apply_sequential_offload, requires_cuda=True,
        conflicts=(Conflict("model_offload", _OFFLOAD_REPLACES),
                   Conflict("group_offload", _GROUP_VS_ACCELERATE)),
        notes="On the CPU, accelerate 1.15 cannot even run it: onloading to 'cpu:0' turns the "
              "parameters into plain tensors and the next offload fails.",
        estimation=ESTIMATED,
    ),
    Technique(
        name="model_offload",
        summary="whole models onloaded to the GPU on demand (pipe.enable_model_cpu_offload())",
        claim="below 3.5e9 bytes (3e9 with attention slicing) at almost the latency of the "
              "pipeline on the GPU",
        order=51, stage=Stage.PLACE, apply=apply_model_offload, requires_cuda=True,
        conflicts=(Conflict("group_offload", _GROUP_VS_ACCELERATE),),
        estimation=ESTIMATED,
    ),
    Technique(
        name="group_offload",
        summary="leaf-level group offloading with CUDA streams (pipe.enable_group_offload, "
                "use_stream=True): the next layer is prefetched while this one runs",
        claim="less memory than block-level offload and no offload; the images stay right "
              "(diffusers issues 11981 and 12673)",
        order=52, stage=Stage.PLACE, apply=OffloadGroups(use_stream=True), requires_cuda=True,
        conflicts=(Conflict("vae_tiling", "diffusers warns that group offloading an autoencoder "
                                          "with CUDA streams may not work when its first forward "
                                          "pass runs tiled"),),
        estimation=ESTIMATED,
    ),
    Technique(
        name="sync_group_offload",
        summary="leaf-level group offloading with synchronous copies, no CUDA streams "
                "(pipe.enable_group_offload, use_stream=False): each layer is brought over "
                "when it is called",
        claim="the memory of sequential offload (the guide: leaf level without streams is "
              "equivalent to CPU offloading), at most the streamed variant's peak",
        order=53, stage=Stage.PLACE, apply=OffloadGroups(use_stream=False), requires_cuda=True,
        conflicts=(Conflict("group_offload", "a pipeline is group-offloaded once: with CUDA "
                                             "streams or without"),
                   Conflict("model_offload", _GROUP_VS_ACCELERATE),
                   Conflict("sequential_offload", _GROUP_VS_ACCELERATE)),
        estimation=ESTIMATED,
    ),
    Technique(
        name="jit_trace",
        summary="the UNet traced with torch.jit.trace for the generation's shapes",
        claim="x2.96 over fp32 with fp16 and channels_last (3.21 s)",
        order=60, stage=Stage.WRAP, apply=apply_jit_trace, output_tolerance=REORDERED,
        conflicts=(
            _traced_hooks("layerwise_casting"),
            _traced_hooks("sequential_offload"),
            _traced_hooks("model_offload"),
            _traced_hooks("group_offload"),
            _traced_hooks("sync_group_offload"),
            Conflict("compile", "both replace the UNet's forward: trace or compile, not both"),
        ),
        families=Families.refusing({
            "sdxl": "the traced UNet takes latents, timestep and text embeddings; SDXL's UNet "
                    "also takes the pooled text embedding and the size micro-conditioning "
                    "(added_cond_kwargs), which the trace does not carry: use compile",
            "sd3": "the traced UNet replaces pipe.unet, and SD 3 denoises with a transformer: "
                   "use compile",
            "flux": "the traced UNet replaces pipe.unet, and Flux denoises with a transformer: "
                    "use compile",
        }),
        notes="torch.jit.trace is deprecated in current PyTorch (its replacement is "
              "torch.compile / torch.export): the DeprecationWarning and the TracerWarnings of "
              "the trace are caught. A trace is fixed to the shapes of the ApplyContext; other "
              "shapes are refused.",
        estimation=Estimation(
            refused="a traced UNet runs TorchScript's graph executor, not the Python code the "
                    "estimator follows on meta tensors, and its buffer reuse is not modelled"),
    ),
    Technique(
        name="compile",
        summary="torch.compile of the denoiser (UNet or transformer; in place, default mode), "
                "warmed up at apply",
        claim="today's replacement for the traced UNet: at least its speed-up",
        order=61, stage=Stage.WRAP, apply=apply_compile, min_torch="2.0", probe=compiler_probe,
        output_tolerance=REORDERED,
        notes="Compiling costs about a minute for the tiny UNet on a 2-core CPU with an empty "
              "inductor cache (seconds with a warm one); each new shape compiles again. With "
              "hook-based techniques (layerwise_casting, group_offload) dynamo breaks the graph "
              "at every hooked layer and stops recompiling the shared hook function at its "
              "recompile limit: the result is right but compiled only in part.",
        estimation=Estimation(
            refused="torch.compile fuses kernels and plans its own buffers (inductor), so the "
                    "eager allocations seen on meta tensors are not what compiled code allocates"),
    ),
)

REGISTRY: dict[str, Technique] = {t.name: t for t in _ENTRIES}


@dataclass(frozen=True)
class Preset:
    """A cumulative row of the guide's table (SD 1.5, 512x512, 50 DDIM steps, Titan RTX)."""

    name: str
    techniques: tuple[str, ...]
    guide_latency_s: float
    guide_speedup: float
    notes: str = ""


_PRESET_LIST: tuple[Preset, ...] = (
    Preset("seed:fp16", ("fp16",), 3.61, 2.63),
    Preset("seed:channels_last", ("fp16", "channels_last"), 3.30, 2.88),
    Preset("seed:traced_unet", ("fp16", "channels_last", "jit_trace"), 3.21, 2.96),
    Preset(
        "seed:memory_efficient_attention", ("fp16", "sdpa", "channels_last", "jit_trace"),
        2.63, 3.61,
        notes="sdpa rather than xformers: on PyTorch >= 2 the guide expects both to be equally "
              "fast, and sdpa needs no extra package, so the row is measured on every machine; "
              "xformers is best compared with sdpa directly ('xformers' against 'sdpa').",
    ),
)
PRESETS: dict[str, Preset] = {p.name: p for p in _PRESET_LIST}

