"""Every family end to end through the node classes: Load -> Sample -> VAE Decode."""

from __future__ import annotations

import pytest
import torch

from omni_backend.families import FAMILIES
from omni_diffusion_nodes.nodes.comfy_bridge import ExecutionBlocker

# Families that need an input image run their own path: tests/models/test_image_models.py; audio families
# (a waveform, not pixels): tests/models/test_audio.py.
TEXT_FAMILIES = [key for key, family in FAMILIES.items() if not family.requires_image and not family.audio]


def run_graph(nodes, family_key, settings, tile_size=0):
    (spec,) = nodes["OmniLoadModel"]().load(family_key, "auto", "auto")
    out = nodes["OmniSample"]().sample(spec, **settings)
    latent = out["result"][0]
    images, audio, masks = nodes["OmniVAEDecode"]().decode(spec, latent, tile_size, 64)["result"]
    assert isinstance(audio, ExecutionBlocker) and isinstance(masks, ExecutionBlocker), "image models fill images only"
    return spec, latent, images, out["ui"]


@pytest.mark.slow
@pytest.mark.parametrize("family_key", TEXT_FAMILIES)
def test_family_end_to_end_is_deterministic(headless, nodes, tiny_settings, family_key):
    family = FAMILIES[family_key]
    settings = tiny_settings(family_key, batch_size=2)
    spec, latent, images, ui = run_graph(nodes, family_key, settings)

    frames = settings["frames"]
    assert images.shape == (2 * frames, settings["height"], settings["width"], 3)
    assert images.dtype == torch.float32 and 0.0 <= images.min() and images.max() <= 1.0
    assert images.std() > 1e-3, "decoded image is constant"
    samples = latent["samples"]
    expected_latent_dims = 5 if family.video else 4
    assert samples.ndim == expected_latent_dims and samples.shape[0] == 2
    scale = spec.model_folder.vae_config.get("scale_factor_spatial") or 8  # Wan2.2 TI2V's VAE: 16
    assert samples.shape[-2:] == (settings["height"] // scale, settings["width"] // scale)
    assert latent["omni_family"] == family_key
    assert ui["text"]

    _, again, _, _ = run_graph(nodes, family_key, settings)
    assert torch.equal(again["samples"], samples), "same seed and settings must give the same latent"

    _, other, _, _ = run_graph(nodes, family_key, dict(settings, seed=settings["seed"] + 1))
    assert (other["samples"] - samples).abs().max() > 1e-3, "a different seed must change the latent"


def test_progress_reaches_every_step(headless, nodes, tiny_settings):
    settings = tiny_settings("z-image", steps=5)
    run_graph(nodes, "z-image", settings)
    assert [step for step, _ in headless.progress_log][-5:] == [1, 2, 3, 4, 5]
    assert all(total == 5 for _, total in headless.progress_log)


def test_omni_facade_generates_pil_images(headless):
    from omni_backend import Omni

    omni = Omni(model=str(headless.models_dir / "diffusers" / "flux"))
    out = omni.generate(prompt="a cat", num_inference_steps=2, width=64, height=32, num_images_per_prompt=2)
    assert [image.size for image in out.images] == [(64, 32), (64, 32)]
    assert out.latents.shape == (2, 16, 4, 8)
    assert out.report.text() == ""  # no features asked for, nothing to report


def test_omni_facade_refuses_unknown_options(headless):
    from omni_backend import Omni
    from omni_backend.errors import OmniInputError

    folder = str(headless.models_dir / "diffusers" / "flux")
    with pytest.raises(OmniInputError, match="cache_backend"):
        Omni(model=folder, cache_backend="magic")
    with pytest.raises(OmniInputError, match="unknown keyword"):
        Omni(model=folder, turbo=True)
