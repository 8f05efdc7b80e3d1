"""The trained reference edit model: its committed weights load through the qwen-image-edit family and
follow held-out edits; the edit score tells an edit from a non-edit; its training runs.

The level asserted here (QUICK_LEVEL on QUICK_EDITS held-out edits at QUICK_STEPS steps) keeps the
test to seconds; the full evaluation (30 edits, 20 steps) is benchmarks/prompt_following.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omni_backend.errors import OmniInputError  # noqa: E402
from omni_backend.reference import EDIT_MODEL_DIR, edit_model_path  # noqa: E402
from omni_diffusion_nodes.training.edit_dataset import (  # noqa: E402
    Edit, held_out_combinations, held_out_edits, random_edits, render_pairs, training_combinations,
)
from omni_diffusion_nodes.training.edit_evaluate import held_out_inputs, score_edits  # noqa: E402

# Edits 0-1 (recolour), 10-11 (move), 20-21 (new background) of the held-out list.
QUICK_EDITS = (0, 1, 10, 11, 20, 21)
QUICK_STEPS = 10
QUICK_LEVEL = 3 / 6  # measured 4/6 here (fp16 weights loaded as fp32); the full score is in the model card

needs_model = pytest.mark.skipif(not (EDIT_MODEL_DIR / "model_index.json").is_file(),
                                 reason="reference edit model weights not present")


def test_held_out_edits_never_appear_in_training():
    held_out = set(held_out_combinations())
    assert len(held_out) == 30 and not held_out & set(training_combinations())
    assert not {edit.combination for edit in random_edits(np.random.default_rng(0), 3000)} & held_out
    edits = held_out_edits()
    assert sorted(edit.combination for edit in edits) == sorted(held_out)
    assert all(e.source.colour != e.source.background and e.target.colour != e.target.background for e in edits)


def test_edit_score_accepts_the_edit_and_rejects_non_edits():
    edits, inputs, targets = held_out_inputs()
    assert all(score_edits(edits, inputs, targets))
    assert not any(score_edits(edits, inputs, inputs))  # nothing changed
    assert not any(score_edits(edits, inputs, np.roll(targets, 1, axis=0)))  # another edit's result
    # A move that leaves the shape where it was as well (drawn at both places) is no move.
    moves = [edit for edit in edits if edit.kind == "move"]
    before, after = render_pairs(moves, np.random.default_rng(3))
    doubled = np.stack([_draw_both(m, b, a) for m, b, a in zip(moves, before, after)])
    assert all(score_edits(moves, before.transpose(0, 2, 3, 1), after.transpose(0, 2, 3, 1)))
    assert not any(score_edits(moves, before.transpose(0, 2, 3, 1), doubled))


def _draw_both(edit, before, after):
    """[H, W, 3]: the moved shape drawn, and the original left where it was."""
    background = np.asarray(after[:, 0, 0])[:, None, None]
    old_shape = np.abs(before - background).sum(axis=0, keepdims=True) > 0.05
    return np.where(old_shape, before, after).transpose(1, 2, 0)


def test_input_area_of_a_folder_applies_to_its_run_only():
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit_module

    from omni_backend.families.qwen_image_edit.family import INPUT_AREA_KEY, _input_area
    from omni_backend.weights.model_folder import ModelFolder

    with _input_area(64 * 64):
        assert edit_module.calculate_dimensions(1024 * 1024, 1.0)[:2] == (64, 64)
    assert edit_module.calculate_dimensions(1024 * 1024, 1.0)[:2] == (1024, 1024)  # diffusers' own again
    from omni_backend.families import FAMILIES

    folder = ModelFolder(path="/x/edit", pipeline_class="QwenImageEditPipeline", family_key="qwen-image-edit",
                         components={}, transformer_config={}, vae_config={}, model_index={INPUT_AREA_KEY: "64"})
    with pytest.raises(OmniInputError, match=INPUT_AREA_KEY):
        FAMILIES["qwen-image-edit"].call_context(folder, None)


@needs_model
def test_committed_edit_model_follows_held_out_edits_through_the_family():
    from omni_backend.engine import Engine
    from omni_diffusion_nodes.training.edit_evaluate import evaluate_edits
    from omni_backend.spec import ModelSpec

    folder = edit_model_path()
    weights = [p for p in folder.rglob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 15e6
    assert ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu").family.key == "qwen-image-edit"
    edits = [held_out_edits()[i] for i in QUICK_EDITS]
    result = evaluate_edits(folder, Engine(), steps=QUICK_STEPS, edits=edits)
    assert result["pixels"].shape == (len(edits), 64, 64, 3)
    assert result["score"] >= QUICK_LEVEL, result["failed"]


@needs_model
def test_no_weights_file_is_stored_twice_and_the_edit_model_names_the_vae_it_shares():
    import hashlib

    from omni_backend.reference import MODEL_DIR
    from omni_backend.weights.model_folder import inspect_model_folder

    weights = sorted(EDIT_MODEL_DIR.parent.rglob("*.safetensors"))
    digests = {}
    for path in weights:
        digests.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
    assert len(weights) >= 5 and all(len(paths) == 1 for paths in digests.values()), \
        [paths for paths in digests.values() if len(paths) > 1]
    assert not (EDIT_MODEL_DIR / "vae").exists()
    info = inspect_model_folder(EDIT_MODEL_DIR)
    assert info.component_path("vae") == MODEL_DIR / "vae"
    assert info.vae_config == inspect_model_folder(MODEL_DIR).vae_config


@needs_model
def test_a_shared_component_is_checked_where_it_lives(tmp_path):
    """The edit folder's VAE is the folder beside it: that folder's files are checked (and a change there
    is seen), a missing neighbour is named, and a share that leaves the models' directory is refused."""
    import json
    import shutil

    from omni_backend.reference import MODEL_DIR
    from omni_backend.weights.model_folder import SHARED_COMPONENTS_KEY, folder_label, inspect_model_folder

    models = tmp_path / "diffusers"
    base, edit = models / MODEL_DIR.name, models / EDIT_MODEL_DIR.name
    shutil.copytree(MODEL_DIR, base)
    shutil.copytree(EDIT_MODEL_DIR, edit)
    assert folder_label(edit) is None and inspect_model_folder(edit).component_path("vae") == base / "vae"

    weights = base / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_name("kept-aside"))
    assert folder_label(edit) == "broken: weights missing"
    with pytest.raises(OmniInputError, match=r"\.\./qwen-image-shapes/vae/diffusion_pytorch_model"):
        inspect_model_folder(edit)
    weights.with_name("kept-aside").rename(weights)
    assert folder_label(edit) is None

    shutil.move(base, tmp_path / "elsewhere")
    with pytest.raises(OmniInputError, match="put the qwen-image-shapes folder beside qwen-image-edit-shapes"):
        inspect_model_folder(edit)

    index = json.loads((edit / "model_index.json").read_text())
    for shared in ({"vae": "../../elsewhere/vae"}, {"vae": str(tmp_path / "elsewhere" / "vae")},
                   {"scheduler": "../qwen-image-shapes/scheduler"}, {"vae": ".."}, ["vae"]):
        (edit / "model_index.json").write_text(json.dumps({**index, SHARED_COMPONENTS_KEY: shared}))
        assert folder_label(edit) == "broken: unreadable config", shared


@needs_model
def test_demo_edit_writes_the_scene_and_its_edit(tmp_path, monkeypatch):
    from PIL import Image

    from omni_diffusion_nodes.training.dataset import parse_caption
    from omni_diffusion_nodes.training.evaluate import score_images
    from omni_diffusion_nodes.headless.demo import run_demo
    from omni_diffusion_nodes.headless.recipes import DEMO_EDIT, DEMO_PROMPT

    monkeypatch.setenv("OMNI_DEMO_CACHE", str(tmp_path / "cache"))
    files = run_demo(output_dir=tmp_path / "out", edit=True)
    assert [f.name.startswith("omni-demo-edit") for f in files] == [False, True]
    scene, edited = (np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files)
    assert score_images([DEMO_PROMPT], scene[None]) == [True]
    assert DEMO_EDIT == "make the circle green"
    edit = Edit(parse_caption(DEMO_PROMPT), "recolour", "green")
    assert score_edits([edit], scene[None], edited[None]) == [True]


def test_edit_training_runs_and_its_loss_falls(tmp_path):
    from omni_backend.engine import Engine
    from omni_diffusion_nodes.training.edit_evaluate import generate_edits
    from omni_diffusion_nodes.training.train_edit import main
    from omni_backend.spec import ModelSpec

    out = tmp_path / "tiny-edit-run"
    summary = main(["--out", str(out), "--steps", "12", "--batch", "8", "--pool", "32", "--log-every", "4",
                    "--skip-eval"])
    assert summary["dit"]["loss"] < summary["dit"]["first_loss"]
    assert "started from the text-to-image reference DiT" in (out / "README.md").read_text()
    spec = ModelSpec.from_folder(str(out), dtype="fp32", device="cpu")
    edits, inputs, _ = held_out_inputs(held_out_edits()[:1])
    images = generate_edits(Engine(), spec, edits, inputs, steps=2)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
