"""The trained reference model: its committed weights follow held-out prompts, and its training runs.

The prompt-following level asserted here (FOLLOW_LEVEL on QUICK_PROMPTS prompts at QUICK_STEPS
steps) is kept small so the test takes seconds; the full evaluation (30 prompts, 25 steps) is
benchmarks/prompt_following.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omni_backend.reference import MODEL_DIR, model_path  # noqa: E402
from omni_diffusion_nodes.training.dataset import (  # noqa: E402
    PALETTE, held_out_combinations, held_out_scenes, random_scenes, render_batch, training_combinations,
)
from omni_diffusion_nodes.training.evaluate import default_prompts, evaluate, score_images  # noqa: E402

QUICK_PROMPTS = 8  # the first 8 held-out prompts: every colour, position and shape appears
QUICK_STEPS = 10
FOLLOW_LEVEL = 0.75  # measured 8/8 (fp16 weights loaded as fp32); see the report in the model's README

needs_model = pytest.mark.skipif(not (MODEL_DIR / "model_index.json").is_file(),
                                 reason="reference model weights not present")


def test_held_out_combinations_never_appear_in_training():
    held_out = set(held_out_combinations())
    assert len(held_out) == 30
    assert not held_out & set(training_combinations())
    rng = np.random.default_rng(0)
    assert not {scene.combination for scene in random_scenes(rng, 2000)} & held_out


def test_scorer_accepts_true_renders_and_rejects_wrong_prompts():
    rng = np.random.default_rng(1)
    scenes = held_out_scenes()
    images = render_batch(scenes, rng).transpose(0, 2, 3, 1)
    prompts = [scene.caption for scene in scenes]
    assert all(score_images(prompts, images))
    # Each image scored against the next image's prompt: different colours, background, position.
    shifted = prompts[1:] + prompts[:1]
    assert not any(score_images(shifted, images))


def test_shape_guess_recognises_every_true_render():
    """The shape score (and the VAE's shape round trip, which the model card reports) rests on it."""
    from omni_diffusion_nodes.training.evaluate import guess_shape

    scenes = held_out_scenes() * 2
    images = render_batch(scenes, np.random.default_rng(2)).transpose(0, 2, 3, 1)
    assert all(guess_shape(scene, image) == scene.shape for scene, image in zip(scenes, images))


@needs_model
def test_committed_vae_keeps_what_its_model_card_says():
    from omni_diffusion_nodes.training.train import load_vae
    from omni_diffusion_nodes.training.vae_training import shape_round_trip

    kept = shape_round_trip(load_vae(str(MODEL_DIR / "vae")))
    assert f"the shape survives the round trip for {kept:.3f}" in (MODEL_DIR / "README.md").read_text()


def test_vae_training_path_computes_what_encode_and_decode_compute():
    """Training runs the VAE's convolutions as 2-D and skips decode's clamp; neither may change a number."""
    import torch

    from omni_diffusion_nodes.training import components
    from omni_diffusion_nodes.training.vae_training import (
        decode_unclamped, encode_moments, single_frame_convs, to_model_range,
    )

    torch.manual_seed(0)
    vae = components.vae().eval()
    pixels = to_model_range(render_batch(held_out_scenes()[:2], np.random.default_rng(0)))
    with torch.no_grad():
        expected_latent = vae.encode(pixels).latent_dist.mean
        expected_pixels = vae.decode(expected_latent).sample
        with single_frame_convs(vae):
            with single_frame_convs(vae):  # nested, as an evaluation inside the training loop is
                pass
            latent, _ = encode_moments(vae, pixels)  # still the 2-D path after the inner context
            decoded = decode_unclamped(vae, latent).clamp(-1, 1)
            patched = sum("forward" in vars(m) for m in vae.modules())
        restored = vae.decode(expected_latent).sample  # the 3-D path is back once the context ends
    torch.testing.assert_close(latent, expected_latent, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(decoded, expected_pixels, atol=1e-5, rtol=1e-4)
    assert torch.equal(restored, expected_pixels)
    assert patched > 20 and not any("forward" in vars(m) for m in vae.modules())


@needs_model
def test_committed_model_is_a_complete_safetensors_pipeline():
    import torch
    from diffusers import QwenImagePipeline

    folder = model_path()
    files = [p for p in folder.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) < 15e6
    pipe = QwenImagePipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True,
                                             use_safetensors=True)
    assert len(pipe.vae.config.latents_mean) == pipe.vae.config.z_dim
    assert pipe.scheduler.config.use_dynamic_shifting


@needs_model
def test_committed_model_follows_held_out_prompts_through_the_engine():
    from omni_backend.engine import Engine

    prompts = default_prompts()[:QUICK_PROMPTS]
    result = evaluate(model_path(), Engine(), steps=QUICK_STEPS, images_per_prompt=1, prompts=prompts)
    assert result["images"] == QUICK_PROMPTS
    assert result["pixels"].shape == (QUICK_PROMPTS, 64, 64, 3)
    assert result["score"] >= FOLLOW_LEVEL, result["failed"]


@needs_model
def test_demo_draws_what_its_prompt_says(tmp_path, monkeypatch):
    from PIL import Image

    from omni_diffusion_nodes.headless.demo import run_demo
    from omni_diffusion_nodes.headless.recipes import DEMO_PROMPT

    monkeypatch.setenv("OMNI_DEMO_CACHE", str(tmp_path / "cache"))
    for _ in range(2):  # the second run finds its model link in place
        files = run_demo(output_dir=tmp_path / "out")
    assert len(files) == 1
    image = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float32) / 255
    assert image.shape == (64, 64, 3)
    assert score_images([DEMO_PROMPT], image[None]) == [True]


def test_shape_crops_contain_the_shape():
    from omni_diffusion_nodes.training.vae_training import shape_crops

    rng = np.random.default_rng(4)
    scenes = random_scenes(rng, 16)
    crops = shape_crops(scenes, render_batch(scenes, rng), 32, rng, fraction=1.0)
    assert crops.shape == (16, 3, 32, 32)
    for scene, crop in zip(scenes, crops):  # some pixel of every crop has the shape's colour
        colour = np.asarray(PALETTE[scene.colour], dtype=np.float32)[:, None, None]
        assert (np.abs(crop - colour).max(axis=0) < 0.05).any()


@pytest.mark.slow
def test_training_runs_and_its_losses_fall(tmp_path):
    """The whole recipe, small: the VAE with the shape-centred crops and the edge loss on, then the DiT."""
    from omni_backend.engine import Engine
    from omni_diffusion_nodes.training.evaluate import generate
    from omni_diffusion_nodes.training.train import main
    from omni_backend.spec import ModelSpec

    out = tmp_path / "tiny-run"
    summary = main(["--out", str(out), "--vae-steps", "16", "--vae-batch", "4", "--vae-eval-images", "8",
                    "--vae-centred-crops", "0.75", "--vae-edge-weight", "1.0",
                    "--dit-steps", "24", "--dit-batch", "8", "--pool", "64", "--log-every", "8", "--skip-eval"])
    assert summary["vae"]["loss"] < summary["vae"]["first_loss"]
    assert summary["dit"]["loss"] < summary["dit"]["first_loss"]
    assert 0.0 <= summary["vae"]["shape_kept"] <= 1.0
    assert "the shape survives the round trip" in (out / "README.md").read_text()
    spec = ModelSpec.from_folder(str(out), dtype="fp32", device="cpu")
    images = generate(Engine(), spec, default_prompts()[:1], steps=2, images_per_prompt=1)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
