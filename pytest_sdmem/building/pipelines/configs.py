"""Architecture configs of the synthetic pipelines (``tiny`` and ``sd15``).

The configs are plain data so that they can be hashed into the cache key: changing any value
here gives a new cache entry instead of silently reusing weights of another architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_sdmem.building.pipelines.errors import ModelError

#: The guide's prompt; its words are also whole tokens of the local tokenizer.
DEFAULT_PROMPT = "a photo of an astronaut riding a horse on mars"

# The scheduler betas of SD 1.5 (scheduler/scheduler_config.json), shared by both models so
# that the noise levels of the tiny model look like the real one's.
_SD15_BETAS: dict[str, Any] = {
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
class ModelSpec:
    """Everything needed to build one synthetic pipeline, as JSON-serialisable data.

    ``text_encoder`` holds no vocabulary size when the model uses the local tokenizer's size
    (``None``): the builder fills it in, so the tiny embedding table has no unused rows.
    """

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler_class: str
    scheduler: dict[str, Any]
    safety_checker_vision: dict[str, Any]
    safety_checker_projection_dim: int
    feature_extractor: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The spec as plain data, for the cache key and the cache entry's marker file."""
        return {
            "name": self.name,
            "unet": self.unet,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "scheduler_class": self.scheduler_class,
            "scheduler": self.scheduler,
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


TINY = ModelSpec(
    name="tiny",
    # Same block layout as SD 1.5 (cross-attention down blocks first, plain up block first),
    # with two levels instead of four: 64x64 images give 32x32 latents.
    unet={
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "attention_head_dim": 4,
        "cross_attention_dim": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "norm_num_groups": 32,
    },
    # sample_size 64 makes diffusers' tiling threshold 64 px (see TINY_TILE_THRESHOLD).
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
    },
    text_encoder={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 32,
        "vocab_size": None,
    },
    scheduler_class="DDIMScheduler",
    scheduler=dict(_SD15_BETAS),
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

SD15 = ModelSpec(
    name="sd15",
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "norm_num_groups": 32,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
    },
    text_encoder={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
        "vocab_size": 49408,
    },
    scheduler_class="PNDMScheduler",
    scheduler={**_SD15_BETAS, "skip_prk_steps": True},
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

SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (TINY, SD15)}
SYNTHETIC_MODELS: tuple[str, ...] = tuple(SPECS)

#: Parameter counts of the real SD 1.5 components, which the ``sd15`` build must equal exactly
#: so that its memory and speed are the real model's.
SD15_PARAMETER_COUNTS: dict[str, int] = {
    "unet": 859_520_964,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
}


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
