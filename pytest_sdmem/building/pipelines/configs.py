"""The model catalogue: architecture configs of the synthetic pipelines, one entry per model.

Each entry says its family (sd1, sd2, sdxl, sd3, flux), its diffusers pipeline class, every
component's class and config, its scheduler and the family's generation defaults. The full-size
entries (``sd15``, ``sd21``, ``sd21-base``, ``sdxl``, ``sd3``, ``flux-dev``, ``flux-schnell``)
are the published configs of the real models, so their parameter counts are the real ones
(:data:`PARAMETER_COUNTS`, checked on the meta device by the tests). The tiny entries (``tiny``,
``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux``) use the same classes and pipeline code paths at a
few MB, so every family runs on a CPU in seconds.

The configs are plain data so that they can be hashed into the cache key: changing any value
here gives a new cache entry instead of silently reusing weights of another architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_sdmem.building.pipelines.errors import ModelError

#: The guide's prompt; its words are also whole tokens of the local tokenizers.
DEFAULT_PROMPT = "a photo of an astronaut riding a horse on mars"

#: The families, in the order the catalogue lists them.
FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sd3", "flux")

# The DDPM betas of SD 1.x/2.x and SDXL (their scheduler_config.json files).
_SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}

# CLIP's image normalisation (transformers' OPENAI_CLIP_MEAN/STD), as SD 1.5's
# feature_extractor/preprocessor_config.json ships it.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class Component:
    """One model of a pipeline: its library class (diffusers or transformers) and config.

    A text encoder's config holds ``vocab_size`` None when the model uses its tokenizer's size:
    the builder fills it in, so a tiny embedding table has no unused rows.
    """

    class_name: str
    config: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"class_name": self.class_name, "config": self.config}


@dataclass(frozen=True)
class Defaults:
    """The family's generation defaults, as its diffusers pipeline (or model card) has them.

    ``max_sequence_length`` is the T5 prompt length (None: no T5 encoder); ``negative_prompt``
    whether the pipeline's classifier-free guidance takes a negative prompt (Flux-dev's guidance
    is distilled into the transformer: it has none).
    """

    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    max_sequence_length: int | None = None
    negative_prompt: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "max_sequence_length": self.max_sequence_length,
            "negative_prompt": self.negative_prompt,
        }


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one synthetic pipeline, as JSON-serialisable data.

    ``models`` maps the pipeline's keyword (``unet`` or ``transformer``, ``vae``,
    ``text_encoder``, ``text_encoder_2``, ...) to its component; ``tokenizers`` maps each
    tokenizer keyword to its kind ("clip" or "t5"), built in memory by ``pipelines.tokenizer``.
    The safety checker fields are set for the families whose pipeline has one (SD 1.x).
    ``dtype`` is the dtype the model is published and run in. ``cached``: whether the model
    is saved to the on-disk cache and loaded with ``from_pretrained``; the large ones (SDXL,
    SD 3, Flux: cache entries of 20 to 100 GB) are built directly on their GPU instead.
    """

    name: str
    family: str
    pipeline_class: str
    models: dict[str, Component]
    tokenizers: dict[str, str]
    scheduler_class: str
    scheduler: dict[str, Any]
    defaults: Defaults
    dtype: str = "float16"
    cached: bool = True
    safety_checker_vision: dict[str, Any] | None = None
    safety_checker_projection_dim: int | None = None
    feature_extractor: dict[str, Any] | None = field(default=None)

    @property
    def denoiser(self) -> str:
        """The pipeline keyword of the denoising model: ``unet`` or ``transformer``."""
        return "unet" if "unet" in self.models else "transformer"

    @property
    def vae(self) -> dict[str, Any]:
        return self.models["vae"].config

    @property
    def has_safety_checker(self) -> bool:
        return self.safety_checker_vision is not None

    def as_dict(self) -> dict[str, Any]:
        """The spec as plain data, for the cache key and the cache entry's marker file."""
        return {
            "name": self.name,
            "family": self.family,
            "pipeline_class": self.pipeline_class,
            "models": {key: value.as_dict() for key, value in self.models.items()},
            "tokenizers": self.tokenizers,
            "scheduler_class": self.scheduler_class,
            "scheduler": self.scheduler,
            "defaults": self.defaults.as_dict(),
            "dtype": self.dtype,
            "cached": self.cached,
            "safety_checker_vision": self.safety_checker_vision,
            "safety_checker_projection_dim": self.safety_checker_projection_dim,
            "feature_extractor": self.feature_extractor,
        }


def _feature_extractor(size: int) -> dict[str, Any]:
    return {
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,  # bicubic
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "do_convert_rgb": True,
    }


def _clip(hidden: int, layers: int, heads: int, act: str, projection: int,
          vocab: int | None = 49408, *, with_projection: bool = False) -> Component:
    """A CLIP text encoder (``CLIPTextModel``, or ``...WithProjection`` for pooled embeds)."""
    return Component(
        "CLIPTextModelWithProjection" if with_projection else "CLIPTextModel",
        {
            "hidden_size": hidden,
            "intermediate_size": 4 * hidden,
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "max_position_embeddings": 77,
            "hidden_act": act,
            "projection_dim": projection,
            "vocab_size": vocab,
        },
    )


def _t5(d_model: int, d_ff: int, d_kv: int, heads: int, layers: int, buckets: int,
        vocab: int | None) -> Component:
    """A T5 v1.1 encoder (gated GELU), as SD 3 and Flux use T5-XXL's."""
    return Component(
        "T5EncoderModel",
        {
            "d_model": d_model,
            "d_ff": d_ff,
            "d_kv": d_kv,
            "num_heads": heads,
            "num_layers": layers,
            "feed_forward_proj": "gated-gelu",
            "relative_attention_num_buckets": buckets,
            "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6,
            "tie_word_embeddings": False,
            "vocab_size": vocab,
        },
    )


def _vae(blocks: list[int], sample_size: int, latent_channels: int = 4,
         **extra: Any) -> Component:
    """SD's AutoencoderKL layout; ``extra`` carries scaling/shift factors, ``force_upcast``
    and, for the 16-channel VAE of SD 3 and Flux, no quant convs."""
    return Component(
        "AutoencoderKL",
        {
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": blocks,
            "layers_per_block": 2 if len(blocks) == 4 else 1,
            "down_block_types": ["DownEncoderBlock2D"] * len(blocks),
            "up_block_types": ["UpDecoderBlock2D"] * len(blocks),
            "latent_channels": latent_channels,
            "norm_num_groups": 32,
            "sample_size": sample_size,
            **extra,
        },
    )


_NO_QUANT_CONV = {"use_quant_conv": False, "use_post_quant_conv": False}
_SDXL_VAE = {"scaling_factor": 0.13025, "force_upcast": True}
_SD3_VAE = {"scaling_factor": 1.5305, "shift_factor": 0.0609, **_NO_QUANT_CONV}
_FLUX_VAE = {"scaling_factor": 0.3611, "shift_factor": 0.1159, **_NO_QUANT_CONV}

_SD1_SCHEDULER = {**_SD_BETAS, "skip_prk_steps": True}
_SDXL_SCHEDULER = {
    **_SD_BETAS,
    "skip_prk_steps": True,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
_SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
_FLUX_DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
_FLUX_SCHNELL_SCHEDULER = {**_FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}

_CLIP_TOKENIZERS = {"tokenizer": "clip"}
_SDXL_TOKENIZERS = {"tokenizer": "clip", "tokenizer_2": "clip"}
_SD3_TOKENIZERS = {"tokenizer": "clip", "tokenizer_2": "clip", "tokenizer_3": "t5"}
_FLUX_TOKENIZERS = {"tokenizer": "clip", "tokenizer_2": "t5"}


def _sd_unet(blocks: list[int], heads: int | list[int], cross: int, sample_size: int,
             layers: int, down: list[str], up: list[str], **extra: Any) -> Component:
    return Component(
        "UNet2DConditionModel",
        {
            "sample_size": sample_size,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": blocks,
            "layers_per_block": layers,
            "attention_head_dim": heads,
            "cross_attention_dim": cross,
            "down_block_types": down,
            "up_block_types": up,
            "norm_num_groups": 32,
            **extra,
        },
    )


# --- SD 1.x ----------------------------------------------------------------------------------

TINY = ModelSpec(
    name="tiny",
    family="sd1",
    pipeline_class="StableDiffusionPipeline",
    models={
        # Same block layout as SD 1.5 (cross-attention down blocks first, plain up block
        # first), with two levels instead of four: 64x64 images give 32x32 latents.
        "unet": _sd_unet([32, 64], 4, 32, 32, 1, ["CrossAttnDownBlock2D", "DownBlock2D"],
                         ["UpBlock2D", "CrossAttnUpBlock2D"]),
        # sample_size 64 makes diffusers' tiling threshold 64 px (see TINY_TILE_THRESHOLD).
        "vae": _vae([32, 64], 64),
        "text_encoder": Component("CLIPTextModel", {
            "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "projection_dim": 32, "vocab_size": None,
        }),
    },
    tokenizers=_CLIP_TOKENIZERS,
    scheduler_class="DDIMScheduler",
    scheduler=dict(_SD_BETAS),
    defaults=Defaults(50, 7.5, 64, 64),
    safety_checker_vision={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": 32,
        "patch_size": 8,
    },
    safety_checker_projection_dim=32,
    feature_extractor=_feature_extractor(32),
)

_SD_FOUR_LEVELS = {
    "down": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}

SD15 = ModelSpec(
    name="sd15",
    family="sd1",
    pipeline_class="StableDiffusionPipeline",
    models={
        "unet": _sd_unet([320, 640, 1280, 1280], 8, 768, 64, 2, **_SD_FOUR_LEVELS),
        "vae": _vae([128, 256, 512, 512], 512),
        "text_encoder": _clip(768, 12, 12, "quick_gelu", 768),
    },
    tokenizers=_CLIP_TOKENIZERS,
    scheduler_class="PNDMScheduler",
    scheduler=_SD1_SCHEDULER,
    defaults=Defaults(50, 7.5, 512, 512),
    # CompVis/stable-diffusion-safety-checker: a CLIP ViT-L/14 vision tower, projection 768.
    safety_checker_vision={
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "image_size": 224,
        "patch_size": 14,
    },
    safety_checker_projection_dim=768,
    feature_extractor=_feature_extractor(224),
)

# --- SD 2.1 (stabilityai/stable-diffusion-2-1 and -2-1-base) ---------------------------------


def _sd21(name: str, size: int, scheduler_class: str, prediction: str,
          upcast_attention: bool) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="sd2",
        pipeline_class="StableDiffusionPipeline",
        models={
            "unet": _sd_unet([320, 640, 1280, 1280], [5, 10, 20, 20], 1024, size // 8, 2,
                             **_SD_FOUR_LEVELS, use_linear_projection=True,
                             upcast_attention=upcast_attention),
            "vae": _vae([128, 256, 512, 512], size),
            # OpenCLIP ViT-H/14's text tower (23 of its 24 layers: SD 2 uses the penultimate).
            "text_encoder": _clip(1024, 23, 16, "gelu", 512),
        },
        tokenizers=_CLIP_TOKENIZERS,
        scheduler_class=scheduler_class,
        scheduler={**_SD1_SCHEDULER, "prediction_type": prediction},
        defaults=Defaults(50, 7.5, size, size),
    )


SD21 = _sd21("sd21", 768, "DDIMScheduler", "v_prediction", upcast_attention=True)
SD21_BASE = _sd21("sd21-base", 512, "PNDMScheduler", "epsilon", upcast_attention=False)

# --- SDXL (stabilityai/stable-diffusion-xl-base-1.0) -----------------------------------------

SDXL = ModelSpec(
    name="sdxl",
    family="sdxl",
    pipeline_class="StableDiffusionXLPipeline",
    models={
        "unet": _sd_unet(
            [320, 640, 1280], [5, 10, 20], 2048, 128, 2,
            ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            # 6 micro-conditioning values x 256 + text_encoder_2's 1280-d pooled embedding.
            projection_class_embeddings_input_dim=2816,
        ),
        "vae": _vae([128, 256, 512, 512], 1024, **_SDXL_VAE),
        "text_encoder": _clip(768, 12, 12, "quick_gelu", 768),
        "text_encoder_2": _clip(1280, 32, 20, "gelu", 1280, with_projection=True),
    },
    tokenizers=_SDXL_TOKENIZERS,
    scheduler_class="EulerDiscreteScheduler",
    scheduler=_SDXL_SCHEDULER,
    defaults=Defaults(50, 5.0, 1024, 1024),
    cached=False,
)

TINY_SDXL = ModelSpec(
    name="tiny-sdxl",
    family="sdxl",
    pipeline_class="StableDiffusionXLPipeline",
    models={
        "unet": _sd_unet(
            [32, 64], [2, 4], 64, 32, 1,
            ["DownBlock2D", "CrossAttnDownBlock2D"], ["CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 2], use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
        ),
        "vae": _vae([32, 64], 64, **_SDXL_VAE),
        "text_encoder": _clip(32, 2, 4, "quick_gelu", 32, None),
        "text_encoder_2": _clip(32, 2, 4, "gelu", 32, None, with_projection=True),
    },
    tokenizers=_SDXL_TOKENIZERS,
    scheduler_class="EulerDiscreteScheduler",
    scheduler=_SDXL_SCHEDULER,
    defaults=Defaults(50, 5.0, 64, 64),
)

# --- SD 3 (stabilityai/stable-diffusion-3-medium-diffusers) ----------------------------------

_T5_XXL = _t5(4096, 10240, 64, 64, 24, 32, 32128)
_T5_TINY = _t5(32, 64, 8, 4, 2, 8, None)


def _sd3_transformer(sample_size: int, patch: int, layers: int, head_dim: int, heads: int,
                     joint: int, caption: int, pooled: int, pos_max: int) -> Component:
    return Component("SD3Transformer2DModel", {
        "sample_size": sample_size, "patch_size": patch, "in_channels": 16, "out_channels": 16,
        "num_layers": layers, "attention_head_dim": head_dim, "num_attention_heads": heads,
        "joint_attention_dim": joint, "caption_projection_dim": caption,
        "pooled_projection_dim": pooled, "pos_embed_max_size": pos_max,
    })


SD3 = ModelSpec(
    name="sd3",
    family="sd3",
    pipeline_class="StableDiffusion3Pipeline",
    models={
        "transformer": _sd3_transformer(128, 2, 24, 64, 24, 4096, 1536, 2048, 192),
        "vae": _vae([128, 256, 512, 512], 1024, 16, **_SD3_VAE),
        "text_encoder": _clip(768, 12, 12, "quick_gelu", 768, with_projection=True),
        "text_encoder_2": _clip(1280, 32, 20, "gelu", 1280, with_projection=True),
        "text_encoder_3": _T5_XXL,
    },
    tokenizers=_SD3_TOKENIZERS,
    scheduler_class="FlowMatchEulerDiscreteScheduler",
    scheduler=_SD3_SCHEDULER,
    defaults=Defaults(28, 7.0, 1024, 1024, max_sequence_length=256),
    cached=False,
)

TINY_SD3 = ModelSpec(
    name="tiny-sd3",
    family="sd3",
    pipeline_class="StableDiffusion3Pipeline",
    models={
        # The two CLIP hidden states (16 + 16) are concatenated and padded to T5's 32: the
        # joint attention width, as 768 + 1280 are padded to 4096 in the full model.
        "transformer": _sd3_transformer(32, 1, 2, 8, 4, 32, 32, 32, 64),
        "vae": _vae([32, 64], 64, 16, **_SD3_VAE),
        "text_encoder": _clip(16, 2, 2, "quick_gelu", 16, None, with_projection=True),
        "text_encoder_2": _clip(16, 2, 2, "gelu", 16, None, with_projection=True),
        "text_encoder_3": _T5_TINY,
    },
    tokenizers=_SD3_TOKENIZERS,
    scheduler_class="FlowMatchEulerDiscreteScheduler",
    scheduler=_SD3_SCHEDULER,
    defaults=Defaults(28, 7.0, 64, 64, max_sequence_length=256),
)

# --- Flux (black-forest-labs/FLUX.1-dev and FLUX.1-schnell) ----------------------------------


def _flux_transformer(layers: int, single: int, head_dim: int, heads: int, joint: int,
                      pooled: int, guidance: bool, rope: list[int]) -> Component:
    return Component("FluxTransformer2DModel", {
        "patch_size": 1, "in_channels": 64, "num_layers": layers, "num_single_layers": single,
        "attention_head_dim": head_dim, "num_attention_heads": heads,
        "joint_attention_dim": joint, "pooled_projection_dim": pooled,
        "guidance_embeds": guidance, "axes_dims_rope": rope,
    })


def _flux(name: str, guidance: bool, scheduler: dict[str, Any], defaults: Defaults,
          tiny: bool) -> ModelSpec:
    if tiny:
        transformer = _flux_transformer(1, 1, 16, 2, 32, 32, guidance, [4, 6, 6])
        clip, t5, vae = _clip(32, 2, 4, "quick_gelu", 32, None), _T5_TINY, _vae([32, 64], 64, 16,
                                                                              **_FLUX_VAE)
    else:
        transformer = _flux_transformer(19, 38, 128, 24, 4096, 768, guidance, [16, 56, 56])
        clip, t5 = _clip(768, 12, 12, "quick_gelu", 768), _T5_XXL
        vae = _vae([128, 256, 512, 512], 1024, 16, **_FLUX_VAE)
    return ModelSpec(
        name=name,
        family="flux",
        pipeline_class="FluxPipeline",
        models={"transformer": transformer, "vae": vae, "text_encoder": clip,
                "text_encoder_2": t5},
        tokenizers=_FLUX_TOKENIZERS,
        scheduler_class="FlowMatchEulerDiscreteScheduler",
        scheduler=scheduler,
        defaults=defaults,
        dtype="bfloat16",
        cached=tiny,
    )


# FluxPipeline's own defaults are FLUX.1-dev's; FLUX.1-schnell's are its model card's (4 steps,
# no guidance, 256 T5 tokens): its transformer has no guidance embedding.
_FLUX_DEV_DEFAULTS = Defaults(28, 3.5, 1024, 1024, max_sequence_length=512,
                              negative_prompt=False)
_FLUX_SCHNELL_DEFAULTS = Defaults(4, 0.0, 1024, 1024, max_sequence_length=256,
                                  negative_prompt=False)

FLUX_DEV = _flux("flux-dev", True, _FLUX_DEV_SCHEDULER, _FLUX_DEV_DEFAULTS, tiny=False)
FLUX_SCHNELL = _flux("flux-schnell", False, _FLUX_SCHNELL_SCHEDULER, _FLUX_SCHNELL_DEFAULTS,
                     tiny=False)
TINY_FLUX = _flux("tiny-flux", True, _FLUX_DEV_SCHEDULER,
                  Defaults(28, 3.5, 64, 64, max_sequence_length=512, negative_prompt=False),
                  tiny=True)

SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (TINY, SD15, SD21, SD21_BASE, SDXL, SD3, FLUX_DEV, FLUX_SCHNELL,
                 TINY_SDXL, TINY_SD3, TINY_FLUX)
}
SYNTHETIC_MODELS: tuple[str, ...] = tuple(SPECS)
#: The tiny variant of each family, built and run on a CPU in seconds.
TINY_MODELS: dict[str, str] = {"sd1": "tiny", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3",
                               "flux": "tiny-flux"}

_CLIP_L = 123_060_480
_CLIP_L_PROJECTION = 123_650_304
_CLIP_BIGG_PROJECTION = 694_659_840
_T5_XXL_COUNT = 4_762_310_656
_VAE = 83_653_863
_VAE_16 = 83_819_683

#: Parameter counts of the real models' components (diffusers 0.42.1 / transformers 5.x, on
#: the meta device), which the full-size builds must equal exactly so that their memory and
#: speed are the real models'. SD 3's transformer also holds a 192x192 positional embedding
#: buffer (not a parameter).
PARAMETER_COUNTS: dict[str, dict[str, int]] = {
    "sd15": {"unet": 859_520_964, "vae": _VAE, "text_encoder": _CLIP_L},
    "sd21": {"unet": 865_910_724, "vae": _VAE, "text_encoder": 340_387_840},
    "sd21-base": {"unet": 865_910_724, "vae": _VAE, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": _VAE, "text_encoder": _CLIP_L,
             "text_encoder_2": _CLIP_BIGG_PROJECTION},
    "sd3": {"transformer": 2_028_328_000, "vae": _VAE_16, "text_encoder": _CLIP_L_PROJECTION,
            "text_encoder_2": _CLIP_BIGG_PROJECTION, "text_encoder_3": _T5_XXL_COUNT},
    "flux-dev": {"transformer": 11_901_408_320, "vae": _VAE_16, "text_encoder": _CLIP_L,
                 "text_encoder_2": _T5_XXL_COUNT},
    "flux-schnell": {"transformer": 11_891_178_560, "vae": _VAE_16, "text_encoder": _CLIP_L,
                     "text_encoder_2": _T5_XXL_COUNT},
}
#: SD 1.5's counts (kept under this name for the estimator and the tests that name it).
SD15_PARAMETER_COUNTS: dict[str, int] = PARAMETER_COUNTS["sd15"]


def tile_threshold(spec: ModelSpec) -> int:
    """Largest image side (px) that diffusers' AutoencoderKL still processes in one piece.

    diffusers 0.42 sets ``tile_sample_min_size = sample_size`` and ``tile_latent_min_size =
    sample_size / 2**(len(block_out_channels) - 1)``; with tiling enabled it encodes in tiles
    when an image side exceeds the former and decodes in tiles when a latent side exceeds the
    latter. The pipeline's latents are the image divided by the same power of two, so both
    directions switch at the same image side: the VAE's ``sample_size``.
    """
    return int(spec.vae["sample_size"])


#: With ``vae_tiling`` on ``tiny``, images larger than this (e.g. 128x128) are tiled; 64x64 is not.
TINY_TILE_THRESHOLD: int = tile_threshold(TINY)
#: With ``vae_tiling`` on ``sd15``, images larger than 512 px are tiled (the guide: "tiling is
#: off for 512x512 and smaller").
SD15_TILE_THRESHOLD: int = tile_threshold(SD15)


def get_spec(model: str) -> ModelSpec:
    """The spec of a synthetic model, or a ModelError naming the accepted ones."""
    try:
        return SPECS[model]
    except KeyError:
        raise ModelError(
            f"unknown synthetic model {model!r}: expected one of {', '.join(SYNTHETIC_MODELS)}"
        ) from None
