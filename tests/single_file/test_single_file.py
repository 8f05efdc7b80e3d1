"""Single-file checkpoints as ComfyUI users hold them: headers read without weights, bad files refused
before anything loads, ComfyUI's fp8_scaled weights dequantized (never loaded silently wrong)."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from omni_backend.errors import OmniInputError
from omni_backend.single_file.stored_fp8 import StoredFP8
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


def test_newer_per_layer_fp8_file_reads_back_as_the_unscaled_weights(tmp_path):
    """ComfyUI's newer quantized files: `X.weight_scale` (here one per output row) and an `X.comfy_quant`
    JSON entry beside each FP8 weight; the scale is applied, the markers dropped."""
    weights = _weights(1)
    stored = {}
    for key, tensor in weights.items():
        if tensor.ndim == 2:
            scale = tensor.abs().amax(dim=1) / 448.0
            stored[key] = (tensor / scale[:, None]).to(torch.float8_e4m3fn)
            stored[key[:-len("weight")] + "weight_scale"] = scale
            stored[key[:-len("weight")] + "comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'),
                                                                      dtype=torch.uint8)
        else:
            stored[key] = tensor
    path = tmp_path / "dit_fp8_mixed.safetensors"
    safetensors.torch.save_file({f"model.diffusion_model.{k}": v for k, v in stored.items()}, path)
    file = inspect_weights_file(path, "diffusion_model")
    assert file.weight_format == "fp8_scaled"
    read = read_tensors(file, torch.float32)
    assert set(read) == set(weights)
    for key, tensor in weights.items():
        assert (read[key] - tensor).abs().max() / tensor.abs().max() < 0.07, key


def test_packed_integer_weights_are_refused_by_name(tmp_path):
    path = tmp_path / "dit_nvfp4.safetensors"
    safetensors.torch.save_file({"blocks.0.attn.to_q.weight": torch.zeros(64, 16, dtype=torch.uint8),
                                 "blocks.0.attn.to_q.weight_scale": torch.ones(64, 2),
                                 "blocks.0.attn.to_q.weight_scale_2": torch.ones(())}, path)
    with pytest.raises(OmniInputError, match="nvfp4.*Fix: use the bf16"):
        inspect_weights_file(path, "diffusion_model")


def test_block_scaled_fp8_weights_are_refused_not_misread(tmp_path):
    path = tmp_path / "dit_fp8_blocks.safetensors"
    safetensors.torch.save_file({"blocks.0.attn.to_q.weight": torch.ones(64, 32).to(torch.float8_e4m3fn),
                                 "blocks.0.attn.to_q.weight_scale": torch.ones(2, 1)}, path)
    with pytest.raises(OmniInputError, match="diffusion_model = 'dit_fp8_blocks.safetensors'.*block scales"):
        read_tensors(inspect_weights_file(path, "diffusion_model"), torch.float32)


def test_plain_fp8_file_can_stay_fp8(tmp_path):
    weights = {key: value.to(torch.float8_e4m3fn) if value.ndim == 2 else value for key, value in _weights().items()}
    path = tmp_path / "dit_fp8_e4m3fn.safetensors"
    safetensors.torch.save_file(weights, path)
    file = inspect_weights_file(path, "diffusion_model")
    assert file.weight_format == "fp8_e4m3fn" and file.prefix == ""
    assert read_tensors(file, torch.bfloat16, fp8=StoredFP8())["blocks.0.attn.to_q.weight"].dtype == torch.float8_e4m3fn
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


# ---- a whole model from ComfyUI's files ------------------------------------------------------------
from omni_backend.engine import Engine  # noqa: E402
from omni_backend.families import FAMILIES  # noqa: E402
from omni_backend.parallel.config import ParallelConfig  # noqa: E402
from omni_backend.request import GenerationRequest  # noqa: E402
from omni_backend.single_file.comfy_layout import write_comfy_files  # noqa: E402
from omni_backend.single_file.model_files import ModelFiles, inspect_model_files  # noqa: E402
from omni_backend.spec import ModelSpec  # noqa: E402

REQUEST = GenerationRequest(prompt="a red circle", negative_prompt="blurry", steps=3, guidance=4.0, width=64,
                            height=64)


def _files(written: dict) -> ModelFiles:
    return ModelFiles(*(str(written[name]) for name in ("diffusion_model", "text_encoder", "vae")))


@pytest.fixture(scope="module")
def qwen_twins(tmp_path_factory):
    """The tiny Qwen-Image as a diffusers folder and as ComfyUI's files in three weight formats, and
    the folder's output (fp32) as the reference."""
    root = tmp_path_factory.mktemp("qwen-files")
    folder = FAMILIES["qwen-image"].make_tiny(root / "folder")
    files = {fmt: _files(write_comfy_files("qwen-image", root / fmt, fmt)) for fmt in ("fp32", "bf16", "fp8_scaled")}
    engine = Engine()
    reference = engine.generate(ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu"), REQUEST).latents
    yield folder, files, engine, reference
    engine.unload_all()


@pytest.mark.slow
def test_files_give_the_folder_twins_output(qwen_twins):
    folder, files, engine, reference = qwen_twins
    spec = ModelSpec.from_files(files["fp32"], dtype="fp32", device="cpu")
    assert spec.family_key == "qwen-image" and spec.name == "qwen_image_fp32.safetensors"
    # Same weights bit for bit; diffusers' folder loader keeps its weights in the file's memory map,
    # whose alignment makes the CPU matmul kernels round differently (1e-7 per layer): float32 rounding.
    assert torch.allclose(engine.generate(spec, REQUEST).latents, reference, atol=2e-5)

    # A bf16 file holds the folder's weights rounded to bf16: the same weights as the folder loaded in
    # bf16, bit for bit, and the same output within bf16 rounding (the kernels' alignment again).
    folder_spec = ModelSpec.from_folder(str(folder), dtype="bf16", device="cpu")
    files_spec = ModelSpec.from_files(files["bf16"], dtype="bf16", device="cpu")
    bf16_folder = engine.generate(folder_spec, REQUEST).latents.float()
    bf16_files = engine.generate(files_spec, REQUEST).latents.float()
    for name in ("transformer", "text_encoder", "vae"):
        ours, theirs = (getattr(engine.loaded(s).pipe, name).state_dict() for s in (files_spec, folder_spec))
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs if key != "lm_head.weight"), name
    assert float((bf16_files - bf16_folder).abs().max() / bf16_folder.abs().max()) < 0.01


def test_fp8_scaled_files_stay_within_fp8_error(qwen_twins):
    _folder, files, engine, reference = qwen_twins
    latents = engine.generate(ModelSpec.from_files(files["fp8_scaled"], dtype="fp32", device="cpu"), REQUEST).latents
    error = float((latents - reference).abs().max() / reference.abs().max())
    assert 0 < error < 0.06, f"relative error {error}: FP8 rounding only, never the scale's orders of magnitude"


@pytest.mark.slow
def test_files_cross_to_worker_ranks(qwen_twins):
    """The spec naming the files goes to the ranks, which read the files themselves."""
    _folder, files, engine, reference = qwen_twins
    spec = ModelSpec.from_files(files["fp32"], dtype="fp32", device="cpu").replace(
        parallel=ParallelConfig(ulysses_degree=2))
    assert torch.allclose(engine.generate(spec, REQUEST).latents, reference, atol=2e-5)


def test_wrong_files_are_refused_before_weights_load(qwen_twins, tmp_path):
    _folder, files, _engine, _reference = qwen_twins
    with pytest.raises(OmniInputError, match="diffusion_model = .*holds a VAE.*models/diffusion_models"):
        inspect_model_files(ModelFiles(files["fp32"].vae, files["fp32"].text_encoder, files["fp32"].vae))
    with pytest.raises(OmniInputError, match="vae = .*not a VAE of qwen-image"):
        inspect_model_files(ModelFiles(files["fp32"].diffusion_model, files["fp32"].text_encoder,
                                       files["fp32"].text_encoder))
    # A text encoder whose width does not match the DiT's text input (another model's encoder).
    state = safetensors.torch.load_file(files["fp32"].text_encoder)
    wider = {key: torch.zeros(*[64 if size == 32 else size for size in value.shape]) for key, value in state.items()}
    other = tmp_path / "qwen_2.5_vl_3b.safetensors"
    safetensors.torch.save_file(wider, other)
    (tmp_path / "qwen25_tokenizer").symlink_to(Path(files["fp32"].text_encoder).parent / "qwen25_tokenizer")
    with pytest.raises(OmniInputError, match="text_encoder = .*hidden size is 64.*width 32.*belongs to"):
        inspect_model_files(ModelFiles(files["fp32"].diffusion_model, str(other), files["fp32"].vae))
    # No tokenizer beside the encoder nor in ComfyUI's folders: says where it looked and what to do.
    lone = tmp_path / "lone" / "qwen_2.5_vl_7b.safetensors"
    lone.parent.mkdir()
    lone.write_bytes(Path(files["fp32"].text_encoder).read_bytes())
    with pytest.raises(OmniInputError, match="qwen25_tokenizer/.*not found.*comfy/text_encoders"):
        inspect_model_files(ModelFiles(files["fp32"].diffusion_model, str(lone), files["fp32"].vae))


def test_load_node_reads_files_only_inside_their_folders(headless, nodes):
    loader = nodes["OmniLoadModelFiles"]
    choices = loader.INPUT_TYPES()["required"]
    assert "qwen_image_fp8_e4m3fn.safetensors" in choices["diffusion_model"][0]
    assert "qwen_2.5_vl_7b_fp8_scaled.safetensors" in choices["text_encoder"][0]
    verdict = loader.VALIDATE_INPUTS(diffusion_model="../diffusion_models/qwen_image_fp8_e4m3fn.safetensors")
    assert isinstance(verdict, str) and "only inside the diffusion_models model folders" in verdict
    (spec,) = loader().load("qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                            "qwen_image_vae.safetensors", "fp32", "cpu")
    assert spec.family_key == "qwen-image" and spec.files is not None


def test_without_a_text_encoder_conditioning_gives_the_prompt_texts_latents(qwen_twins):
    """text_encoder = none: nothing of the encoder loads, and the prompt comes as CONDITIONING (here the
    pipeline's own encoding, which ComfyUI's Qwen-Image text encode matches: test_comfyui_text_encode.py)."""
    from dataclasses import replace

    from omni_backend.run.conditioning import TextEmbedding

    _folder, files, engine, _reference = qwen_twins
    with_encoder = ModelSpec.from_files(files["fp32"], dtype="fp32", device="cpu")
    from_text = engine.generate(with_encoder, REQUEST).latents
    pipe = engine.loaded(with_encoder).pipe
    with torch.inference_mode():
        embeddings = {role: TextEmbedding(pipe.encode_prompt(text, device=pipe.device)[0].clone(), role=role)
                      for role, text in (("positive", REQUEST.prompt), ("negative", REQUEST.negative_prompt))}
    without = ModelSpec.from_files(replace(files["fp32"], text_encoder=""), dtype="fp32", device="cpu")
    result = engine.generate(without, replace(REQUEST, prompt="", negative_prompt="", **embeddings))
    assert torch.equal(result.latents, from_text)
    assert engine.loaded(without).pipe.text_encoder is None
    with pytest.raises(OmniInputError, match="positive = 'not connected'.*without its text encoder"):
        engine.generate(without, REQUEST)


def test_a_model_that_needs_its_text_encoder_refuses_none(tmp_path):
    written = write_comfy_files("qwen-image-edit", tmp_path, "bf16")
    files = ModelFiles(str(written["diffusion_model"]), "", str(written["vae"]), family="qwen-image-edit")
    with pytest.raises(OmniInputError, match="text_encoder = 'none'.*needs its text encoder"):
        inspect_model_files(files)
