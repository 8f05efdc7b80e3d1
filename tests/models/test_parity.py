"""Our Sample + Decode with no features give what the plain diffusers pipeline gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_backend.families import FAMILIES
from omni_backend.weights.model_folder import inspect_model_folder

# Families that need an input image run their own path: tests/models/test_image_models.py; audio families
# (a waveform, not pixels): tests/models/test_audio.py.
TEXT_FAMILIES = [key for key, family in FAMILIES.items() if not family.requires_image and not family.audio]


def diffusers_reference(folder, family, settings):
    """The plain diffusers call a user would write, decoded by diffusers itself."""
    info = inspect_model_folder(folder)
    pipe = family.pipeline_class(info.pipeline_class).from_pretrained(folder, dtype=torch.float32,
                                                                      local_files_only=True,
                                                                      **family.load_kwargs(info))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=settings["prompt"], num_inference_steps=settings["steps"], height=settings["height"],
                  width=settings["width"], generator=torch.Generator().manual_seed(settings["seed"]),
                  output_type="np")
    kwargs[family.guidance.argument] = settings["guidance"]
    if family.guidance.takes_negative_prompt:
        kwargs["negative_prompt"] = settings["negative_prompt"]
    if family.video:
        kwargs["num_frames"] = settings["frames"]
    if family.key == "flux2-klein":
        kwargs["text_encoder_out_layers"] = (1, 2, 3)
    if family.key == "longcat-image":
        kwargs["enable_prompt_rewrite"] = False  # diffusers' default is on; Sample's is off
    with torch.no_grad():
        output = pipe(**kwargs)
    images = output.frames if family.video else output.images
    return torch.from_numpy(np.asarray(images)).float().reshape(-1, settings["height"], settings["width"], 3)


@pytest.mark.slow
@pytest.mark.parametrize("family_key", TEXT_FAMILIES)
def test_sample_matches_plain_diffusers(headless, nodes, tiny_settings, family_key):
    family = FAMILIES[family_key]
    settings = tiny_settings(family_key)
    (spec,) = nodes["OmniLoadModel"]().load(family_key, "fp32", "cpu")
    latent = nodes["OmniSample"]().sample(spec, **settings)["result"][0]
    ours = nodes["OmniVAEDecode"]().decode(spec, latent, 0, 64)["result"][0]

    reference = diffusers_reference(str(headless.models_dir / "diffusers" / family_key), family, settings)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1e-4
