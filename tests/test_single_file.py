"""Single-file checkpoints as ComfyUI users hold them: headers read without weights, bad files refused
before anything loads, ComfyUI's fp8_scaled weights dequantized (never loaded silently wrong)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from omni_backend.errors import OmniInputError
from omni_backend.single_file.weights_file import inspect_weights_file, read_tensors


def _weights(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"blocks.0.attn.to_q.weight": torch.randn(64, 32, generator=generator) * 0.02,
            "blocks.0.attn.to_q.bias": torch.randn(64, generator=generator) * 0.02,
            "blocks.1.attn.to_q.weight": torch.randn(64, 32, generator=generator) * 3.0,
            "norm.weight": torch.ones(32)}


def _comfy_fp8_scaled(weights: dict) -> dict:
    """ComfyUI's fp8_scaled layout: FP8 matrices, a float32 `.scale_weight` each, a `scaled_fp8` marker,
    under the `model.diffusion_model.` prefix."""
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, tensor in weights.items():
        if tensor.ndim == 2:
            scale = tensor.abs().max() / 448.0
            out[key] = (tensor / scale).to(torch.float8_e4m3fn)
            out[key[:-len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = tensor
    return {f"model.diffusion_model.{key}": tensor for key, tensor in out.items()}


def test_fp8_scaled_file_reads_back_as_the_unscaled_weights(tmp_path):
    weights = _weights()
    path = tmp_path / "dit_fp8_scaled.safetensors"
    safetensors.torch.save_file(_comfy_fp8_scaled(weights), path)

    file = inspect_weights_file(path, "diffusion_model")
    assert file.weight_format == "fp8_scaled" and file.prefix == "model.diffusion_model."
    read = read_tensors(file, torch.float32)
    assert set(read) == set(weights), "prefix stripped, scales and the marker dropped, nothing else lost"
    for key, tensor in weights.items():
        # FP8 e4m3 keeps 3 mantissa bits: within 1/16 of each weight's magnitude, whatever the scale
        # (the two matrices differ in scale by 150x; without the scale they would be off by it).
        error = (read[key] - tensor).abs().max() / tensor.abs().max()
        assert error < 0.07, (key, float(error))
    unscaled = safetensors.torch.load_file(path)["model.diffusion_model.blocks.1.attn.to_q.weight"].float()
    assert (unscaled - weights["blocks.1.attn.to_q.weight"]).abs().max() > 10, \
        "the raw FP8 values are far from the weights: the scale matters"


def test_plain_fp8_file_can_stay_fp8(tmp_path):
    weights = {key: value.to(torch.float8_e4m3fn) if value.ndim == 2 else value for key, value in _weights().items()}
    path = tmp_path / "dit_fp8_e4m3fn.safetensors"
    safetensors.torch.save_file(weights, path)
    file = inspect_weights_file(path, "diffusion_model")
    assert file.weight_format == "fp8_e4m3fn" and file.prefix == ""
    assert read_tensors(file, torch.bfloat16, keep_fp8=True)["blocks.0.attn.to_q.weight"].dtype == torch.float8_e4m3fn
    assert read_tensors(file, torch.bfloat16)["blocks.0.attn.to_q.weight"].dtype == torch.bfloat16


def test_pickle_checkpoint_is_refused_unread(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04 not even read")
    with pytest.raises(OmniInputError, match="pickle.*safetensors"):
        inspect_weights_file(path, "diffusion_model")


def test_truncated_file_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "dit.safetensors"
    safetensors.torch.save_file(_weights(), path)
    path.write_bytes(path.read_bytes()[:-100])  # an interrupted download
    with pytest.raises(OmniInputError, match="incomplete.*download it again"):
        inspect_weights_file(path, "diffusion_model")
    path.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(OmniInputError, match="incomplete or not a safetensors"):
        inspect_weights_file(path, "diffusion_model")
