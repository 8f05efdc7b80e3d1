"""Fitting TeaCache coefficients (omni-diffusion fit-teacache) on real sampling runs of tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_backend.cache import TeaCacheConfig
from omni_backend.cache.teacache_fit import DEGREE, fit_teacache, step_pairs
from omni_backend.errors import OmniIncompatibleError
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec
from omni_diffusion_nodes.headless.cli import main as cli_main
from omni_diffusion_nodes.nodes.cache_nodes import parse_coefficients

STEPS = 6


def requests(seeds=2, guidance=4.0):
    return [GenerationRequest(prompt="a red circle", negative_prompt="", steps=STEPS, guidance=guidance, seed=seed,
                              width=64, height=64) for seed in range(seeds)]


def test_step_pairs_pair_each_branch_with_its_own_previous_step():
    ones = torch.ones(4)
    # Two calls per step (cond, uncond). The cond branch's input grows 10% a step and its output
    # 20%; the uncond branch stays constant, so mixing the branches up would show.
    calls = []
    for step in range(3):
        calls.append((ones * 1.1 ** step, ones * 1.2 ** step))
        calls.append((ones * 7, ones * 7))
    xs, ys = step_pairs(calls, steps=3)
    assert xs == pytest.approx([0.1, 0.1, 0.0, 0.0])
    assert ys == pytest.approx([0.2, 0.2, 0.0, 0.0])
    with pytest.raises(ValueError, match="do not split into 4 steps"):
        step_pairs(calls, steps=4)


def test_fit_on_real_runs_records_every_step_pair_and_leaves_the_model_clean(models_dir, engine):
    spec = ModelSpec.from_folder(str(models_dir / "diffusers" / "qwen-image"), dtype="fp32", device="cpu")
    before = engine.generate(spec, requests(seeds=1)[0]).latents
    fit = fit_teacache(engine, spec, requests())
    # Qwen-Image runs true CFG as two calls: 2 runs x 2 branches x (STEPS - 1) pairs.
    assert len(fit.input_changes) == len(fit.output_changes) == 2 * 2 * (STEPS - 1)
    assert (fit.input_changes > 0).all() and (fit.output_changes > 0).all()
    assert len(fit.coefficients) == DEGREE + 1 and all(np.isfinite(fit.coefficients))
    # A least-squares fit with a constant term never explains less than the mean does.
    assert 0.0 <= fit.r_squared <= 1.0
    # Recording hooks are gone: the next plain run is bit-identical to the one before the fit.
    transformer = engine.loaded(spec).pipe.transformer
    assert not transformer._forward_hooks and not transformer.transformer_blocks[0]._forward_pre_hooks
    assert torch.equal(engine.generate(spec, requests(seeds=1)[0]).latents, before)
    # The coefficients go straight into Apply TeaCache.
    assert parse_coefficients(fit.text()) == pytest.approx(fit.coefficients, rel=1e-5)
    cached = engine.generate(spec.replace(cache=TeaCacheConfig(coefficients=fit.coefficients)), requests(1)[0])
    assert "TeaCache" in cached.report.sections


def test_fit_refuses_a_family_without_an_extractor(models_dir, engine):
    spec = ModelSpec.from_folder(str(models_dir / "diffusers" / "sd3"), dtype="fp32", device="cpu")
    with pytest.raises(OmniIncompatibleError, match="no TeaCache extractor for Stable-Diffusion-3.5"):
        fit_teacache(engine, spec, requests(seeds=1))


def test_cli_prints_coefficients_apply_teacache_accepts(models_dir, capsys):
    code = cli_main(["fit-teacache", str(models_dir / "diffusers" / "z-image"), "--prompt", "a blue square",
                     "--steps", str(STEPS), "--seeds", "1", "--width", "64", "--height", "64", "--dtype", "fp32",
                     "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert len(parse_coefficients(out.out.strip())) == DEGREE + 1
    assert "step pairs" in out.err
