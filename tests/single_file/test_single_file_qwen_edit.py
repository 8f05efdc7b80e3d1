"""Qwen-Image-Edit / Edit-2509 from ComfyUI's files: Qwen-Image's DiT layout, so the `family` input names
them (Edit-2511's file carries ComfyUI's marker, so auto finds it); the processor the edit pipelines need
is built beside the tokenizer."""

from __future__ import annotations

import pytest
import torch

from omni_backend.engine import Engine
from omni_backend.errors import OmniInputError
from omni_backend.families import FAMILIES
from omni_backend.request import GenerationRequest
from omni_backend.single_file.comfy_layout import write_comfy_files
from omni_backend.single_file.model_files import ModelFiles, inspect_model_files
from omni_backend.spec import ModelSpec


@pytest.mark.slow
def test_edit_2509_files_give_the_folder_twins_output(tmp_path):
    family = "qwen-image-edit-2509"
    folder = FAMILIES[family].make_tiny(tmp_path / "folder")
    written = {name: str(path) for name, path in write_comfy_files(family, tmp_path / "files", "fp32").items()}
    assert written["diffusion_model"].endswith("qwen_image_edit_2509_fp32.safetensors")
    plain = ModelFiles(written["diffusion_model"], written["text_encoder"], written["vae"])
    # The shapes are Qwen-Image's: auto reads a Qwen-Image; the family input names the edit model.
    assert inspect_model_files(plain).family_key == "qwen-image"
    files = ModelFiles(written["diffusion_model"], written["text_encoder"], written["vae"], family=family)
    info = inspect_model_files(files)
    assert info.family_key == family and info.components["processor"] == ("transformers", "Qwen2VLProcessor")
    with pytest.raises(OmniInputError, match="family = 'wan2.2': .*holds the DiT of qwen-image.*set family to auto"):
        inspect_model_files(ModelFiles(written["diffusion_model"], written["text_encoder"], written["vae"],
                                       family="wan2.2"))
    assert_files_give_the_folder_twins_output(files, folder, steps=3)


def assert_files_give_the_folder_twins_output(files: ModelFiles, folder, steps: int) -> None:
    """Two input images through the single files and through the diffusers twin: the same weights and
    processor settings (the tiny ones, kept beside the tokenizer), so float32 rounding only."""
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    request = GenerationRequest(prompt="make it red", negative_prompt="blurry", steps=steps, guidance=4.0, width=64,
                                height=64, images=(image, image.flip(1)))
    engine = Engine()
    try:
        reference = engine.generate(ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu"), request).latents
        latents = engine.generate(ModelSpec.from_files(files, dtype="fp32", device="cpu"), request).latents
    finally:
        engine.unload_all()
    assert torch.allclose(latents, reference, atol=2e-5), float((latents - reference).abs().max())


@pytest.mark.slow
def test_edit_2511_files_are_found_by_comfyuis_marker_and_give_the_folder_twins_output(tmp_path):
    """ComfyUI's Edit-2511 file carries an empty `__index_timestep_zero__` tensor (its model detection reads it):
    auto finds the family by it, the DiT gets zero_cond_t, and the marker never reaches the model."""
    from safetensors import safe_open

    family = "qwen-image-edit-2511"
    folder = FAMILIES[family].make_tiny(tmp_path / "folder")
    written = {name: str(path) for name, path in write_comfy_files(family, tmp_path / "files", "fp32").items()}
    assert written["diffusion_model"].endswith("qwen_image_edit_2511_fp32.safetensors")
    with safe_open(written["diffusion_model"], "pt") as file:  # ComfyUI's layout: model.diffusion_model.<key>
        assert "model.diffusion_model.__index_timestep_zero__" in file.keys()
    files = ModelFiles(written["diffusion_model"], written["text_encoder"], written["vae"])
    info = inspect_model_files(files)
    assert info.family_key == family and info.transformer_config["zero_cond_t"] is True
    with pytest.raises(OmniInputError, match="family = 'qwen-image-edit-2509': .*set family to auto or "
                                             "qwen-image-edit-2511"):
        inspect_model_files(ModelFiles(written["diffusion_model"], written["text_encoder"], written["vae"],
                                       family="qwen-image-edit-2509"))
    assert_files_give_the_folder_twins_output(files, folder, steps=2)
