"""LATENT dict -> ComfyUI IMAGE: checks the latent fits the model's VAE, picks tiling, converts layout."""

from __future__ import annotations

from .errors import OmniInputError

def check_latent(spec, latent: dict):
    if not isinstance(latent, dict) or "samples" not in latent:
        raise OmniInputError("samples", type(latent).__name__, "expected a LATENT from Sample",
                             "connect the samples output of an Omni Sample node")
    samples = latent["samples"]
    family = spec.family
    expected_dims = 5 if family.video else 4
    channels = family.latent_channels(spec.model_folder.vae_config)
    source = latent.get("omni_family")
    if samples.ndim != expected_dims or samples.shape[1] != channels:
        made_by = f" (made by a {source} model)" if source else ""
        raise OmniInputError("samples", tuple(samples.shape),
                             f"{spec.family.title}'s VAE expects {expected_dims}-D latents with {channels} "
                             f"channels{made_by}",
                             "decode with the same model that sampled these latents")
    return samples


def decode_to_images(engine, spec, latent: dict, settings):
    """(IMAGE, RunReport) for a LATENT decoded with the model's VAE."""
    pixels, report = engine.decode_with_report(spec, check_latent(spec, latent), settings)
    return to_comfy_images(pixels), report


def to_comfy_images(pixels):
    """[B,3,H,W] or [B,3,F,H,W] in [0,1] -> IMAGE [N,H,W,3] (video frames become the batch)."""
    if pixels.ndim == 5:
        batch, channels, frames, height, width = pixels.shape
        pixels = pixels.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    return pixels.permute(0, 2, 3, 1).contiguous().float()
