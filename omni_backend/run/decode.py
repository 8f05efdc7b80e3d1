"""LATENT dict -> ComfyUI IMAGE or AUDIO: checks the latent fits the model's VAE, picks tiling, converts layout."""

from __future__ import annotations

import torch

from ..errors import OmniInputError


def check_latent(spec, latent: dict):
    if not isinstance(latent, dict) or "samples" not in latent:
        raise OmniInputError("samples", type(latent).__name__, "expected a LATENT from Sample",
                             "connect the samples output of an Omni Sample node")
    samples = latent["samples"]
    if not isinstance(samples, torch.Tensor) or not samples.is_floating_point():
        raise OmniInputError("samples", type(samples).__name__, "a LATENT's samples must be a float tensor",
                             "connect the samples output of an Omni Sample node")
    if samples.numel() == 0 or min(samples.shape[2:], default=0) < 1:
        raise OmniInputError("samples", tuple(samples.shape), "the latent is empty", "sample at least one image")
    if not torch.isfinite(samples).all():
        raise OmniInputError("samples", "NaN/inf values", "the latent holds values that are not finite numbers "
                             "(they decode to a black or garbage image)",
                             "sample again; if it repeats, use fp32 or bf16 instead of fp16 for this model")
    family = spec.family
    expected_dims = 3 if family.audio else 5 if family.video or family.layered else 4
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


def split_alpha(images):
    """RGBA IMAGE [N,H,W,4] -> (IMAGE [N,H,W,3], MASK [N,H,W] = 1 - alpha), ComfyUI's pair for a
    transparent image (what Load Image gives and Join Image with Alpha takes)."""
    return images[..., :3].contiguous(), (1.0 - images[..., 3]).contiguous()


def decode_to_audio(engine, spec, latent: dict, settings):
    """(AUDIO, RunReport): the waveform of an audio LATENT, cut to the samples Sample was asked for."""
    samples = check_latent(spec, latent)
    window = latent.get("audio_window")
    if not (isinstance(window, (list, tuple)) and len(window) == 2 and all(isinstance(i, int) for i in window)
            and 0 <= window[0] < window[1]):
        raise OmniInputError("samples", "a LATENT without its audio window", "the decode needs the seconds Sample "
                             "kept (its audio_window)", "connect the samples output of an Omni Sample node directly")
    waveform, report = engine.decode_with_report(spec, samples, settings)
    rate = spec.family.sample_rate(spec.model_folder.vae_config)
    return {"waveform": waveform[:, :, window[0]:window[1]].contiguous(), "sample_rate": rate}, report
