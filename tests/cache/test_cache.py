"""Apply TeaCache and Apply Cache-DiT: lossless at threshold 0, real skipped work above, no leaks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cache_support import assert_report_counts_the_work

from omni_backend import Omni
from omni_backend.blocks.diagnostics import count_block_work
from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.engine import default_engine
from omni_backend.errors import OmniIncompatibleError, OmniInputError
from omni_backend.request import GenerationRequest

TEACACHE_FAMILIES = ["qwen-image", "z-image", "flux", "flux2-klein", "longcat-image"]
ALL_FAMILIES = ["qwen-image", "z-image", "flux", "flux2-klein", "sd3", "wan2.2", "longcat-image", "ovis-image",
                "glm-image"]


def request_for(family_key, **changes):
    values = dict(prompt="a red circle", negative_prompt="blurry", steps=8, guidance=4.0, width=64, height=64,
                  frames=9 if family_key == "wan2.2" else 1)
    values.update(changes)
    return GenerationRequest(**values)


def run(spec, request):
    engine = default_engine()
    entry = engine.loaded(spec)
    with count_block_work(entry.pipe, spec.family) as work:
        result = engine.generate(spec, request)
    return result, work


def load(nodes, family_key):
    return nodes["OmniLoadModel"]().load(family_key, "auto", "auto")[0]


def teacache(nodes, spec, thresh, **extra):
    settings = dict(rel_l1_thresh=thresh, start_percent=0.0, end_percent=1.0, compute_last_step=True,
                    coefficients="")
    settings.update(extra)
    return nodes["OmniApplyTeaCache"]().apply(spec, **settings)[0]


def cache_dit(nodes, spec, **changes):
    settings = dict(preset="custom", Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
                    residual_diff_threshold=0.24, max_cached_steps=-1, max_continuous_cached_steps=3,
                    enable_taylorseer=False, taylorseer_order=1, scm_policy="none", scm_mode="dynamic")
    settings.update(changes)
    return nodes["OmniApplyCacheDiT"]().apply(spec, **settings)[0]


def hook_names(pipe, family):
    names = set()
    for _c, transformer in family.transformers(pipe):
        for module in transformer.modules():
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                names |= set(registry.hooks)
            if "forward" in module.__dict__:
                names.add(f"instance forward on {type(module).__name__}")
    return names


@pytest.mark.parametrize("family_key", TEACACHE_FAMILIES)
def test_teacache_threshold_zero_is_lossless_and_high_threshold_skips_work(headless, nodes, family_key):
    spec = load(nodes, family_key)
    request = request_for(family_key)
    baseline, baseline_work = run(spec, request)

    exact, exact_work = run(teacache(nodes, spec, 0.0), request)
    assert torch.equal(exact.latents, baseline.latents)
    assert exact_work.executed == baseline_work.executed
    assert exact.report.sections["TeaCache"]["text"].startswith("skipped nothing: the smallest accumulated change")

    fast, fast_work = run(teacache(nodes, spec, 50.0), request)
    assert fast_work.executed < baseline_work.executed / 2, "a high threshold must skip most block computations"
    assert_report_counts_the_work(fast, TeaCacheConfig(), fast_work, baseline_work)
    summary = fast.report.sections["TeaCache"]
    assert summary["speedup_estimate"] > 2
    assert all(record["computed"][0] == 0 and request.steps - 1 in record["computed"]
               for record in summary["branches"].values()), "first and last steps always compute"
    error = (fast.latents - baseline.latents).abs().mean() / baseline.latents.abs().mean()
    other_seed, _ = run(spec, dataclasses.replace(request, seed=request.seed + 1))
    seed_error = (other_seed.latents - baseline.latents).abs().mean() / baseline.latents.abs().mean()
    print(f"{family_key}: TeaCache 50 computed {fast_work.executed}/{baseline_work.executed} blocks, "
          f"relative error {error:.3f} (another seed: {seed_error:.3f})")
    assert error < seed_error / 2, "skipped steps reuse residuals: the result must stay the baseline's image"

    after, after_work = run(spec, request)
    assert torch.equal(after.latents, baseline.latents), "a run without the node must be bit-identical"
    assert after_work.executed == baseline_work.executed
    assert not hook_names(default_engine().loaded(spec).pipe, spec.family)


def test_teacache_keeps_cfg_branches_apart(headless, nodes):
    spec = teacache(nodes, load(nodes, "qwen-image"), 0.3)
    request = request_for("qwen-image", steps=6)
    pipe = default_engine().loaded(spec).pipe
    seen = {}

    def inspect_states(step, _total):
        if step == 3:
            hook = pipe.transformer.transformer_blocks[0]._diffusers_hook.get_hook("omni_teacache_block")
            seen.update({branch: state.residuals[0][0].clone()
                         for branch, state in hook.state_manager._state_cache.items()})

    from omni_backend.run.sampling import RunControl

    result = default_engine().generate(spec, request, RunControl(progress=inspect_states))
    assert set(seen) == {"cond", "uncond"}
    assert not torch.equal(seen["cond"], seen["uncond"]), "each branch must keep its own residual"
    branches = result.report.sections["TeaCache"]["branches"]
    assert set(branches) == {"cond", "uncond"}
    assert all(len(b["computed"]) + len(b["skipped"]) == 6 for b in branches.values())
    assert "cond computed" in result.report.text() and "uncond computed" in result.report.text()


def test_teacache_window_and_last_step(headless, nodes):
    spec = load(nodes, "flux")
    request = request_for("flux", steps=10)
    windowed, _ = run(teacache(nodes, spec, 50.0, start_percent=0.5, end_percent=0.8), request)
    record = windowed.report.sections["TeaCache"]["branches"]["cond"]
    assert record["skipped"] and all(5 <= step < 8 for step in record["skipped"])
    free_end, _ = run(teacache(nodes, spec, 50.0, compute_last_step=False), request)
    assert 9 in free_end.report.sections["TeaCache"]["branches"]["cond"]["skipped"]


def test_teacache_custom_coefficients_change_decisions(headless, nodes):
    spec = load(nodes, "flux")
    request = request_for("flux")
    # At a tiny threshold the family's polynomial computes every step; a constant polynomial of 0.0
    # never accumulates, so every step between the first and the last is skipped.
    default, default_work = run(teacache(nodes, spec, 1e-6), request)
    custom, custom_work = run(teacache(nodes, spec, 1e-6, coefficients="0, 0, 0, 0, 0"), request)
    assert len(default.report.sections["TeaCache"]["branches"]["cond"]["computed"]) == request.steps
    assert len(custom.report.sections["TeaCache"]["branches"]["cond"]["computed"]) == 2  # first and last
    assert custom_work.executed < default_work.executed
    with pytest.raises(OmniInputError, match="5 numbers"):
        teacache(nodes, spec, 0.2, coefficients="1, 2, 3")
    assert "not a list of numbers" in nodes["OmniApplyTeaCache"].VALIDATE_INPUTS(coefficients="1, x")


@pytest.mark.parametrize("family_key", ["sd3", "wan2.2"])
def test_teacache_refused_without_extractor(headless, nodes, family_key):
    with pytest.raises(OmniIncompatibleError) as info:
        teacache(nodes, load(nodes, family_key), 0.2)
    assert "Apply TeaCache" in str(info.value) and "Apply Cache-DiT" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("family_key", ALL_FAMILIES)
def test_cache_dit_runs_on_every_family_and_restores(headless, nodes, family_key):
    spec = load(nodes, family_key)
    request = request_for(family_key)
    baseline, baseline_work = run(spec, request)

    exact, exact_work = run(cache_dit(nodes, spec, residual_diff_threshold=0.0), request)
    assert torch.allclose(exact.latents, baseline.latents, atol=1e-5), "threshold 0 caches nothing"
    assert exact_work.executed == baseline_work.executed
    assert exact.report.sections["Cache-DiT"]["text"].startswith("skipped nothing: residual_diff_threshold 0")

    # A threshold >= 1 makes cache-dit cache whatever its warm-up and limits allow.
    fast, fast_work = run(cache_dit(nodes, spec, residual_diff_threshold=1.0), request)
    assert fast_work.executed < baseline_work.executed
    assert_report_counts_the_work(fast, CacheDiTConfig(), fast_work, baseline_work)
    assert fast.report.sections["Cache-DiT"]["speedup_estimate"] > 1.2
    assert "cached" in fast.report.text()

    after, _ = run(spec, request)
    assert torch.equal(after.latents, baseline.latents), "disable_cache must restore the model exactly"
    assert not {n for n in hook_names(default_engine().loaded(spec).pipe, spec.family) if "cache" in n.lower()}


def test_cache_dit_taylorseer_and_scm(headless, nodes):
    spec = load(nodes, "qwen-image")
    request = request_for("qwen-image", steps=8, guidance=1.0)
    plain, _ = run(cache_dit(nodes, spec, residual_diff_threshold=1.0), request)
    taylor, _ = run(cache_dit(nodes, spec, residual_diff_threshold=1.0, enable_taylorseer=True), request)
    assert not torch.equal(plain.latents, taylor.latents), "TaylorSeer forecasts instead of reusing"

    # With CFG off, every call is the cond branch (the Qwen adapter's separate-CFG default is not used).
    assert "uncond" not in plain.report.text()
    assert len(plain.report.sections["Cache-DiT"]["cached_steps"][0]) >= 3

    scm8, _ = run(cache_dit(nodes, spec, scm_policy="fast", scm_mode="static", residual_diff_threshold=0.0),
                  request)
    import cache_dit as library

    mask = library.steps_mask(mask_policy="fast", total_steps=8)
    cached = scm8.report.sections["Cache-DiT"]["cached_steps"][0]
    assert cached and all(mask[step] == 0 for step in cached), "static SCM caches exactly the masked steps"
    scm12, _ = run(cache_dit(nodes, spec, scm_policy="fast", scm_mode="static", residual_diff_threshold=0.0),
                   request_for("qwen-image", steps=12, guidance=1.0))
    mask12 = library.steps_mask(mask_policy="fast", total_steps=12)
    assert sorted(scm12.report.sections["Cache-DiT"]["cached_steps"][0]) == [i for i, m in enumerate(mask12)
                                                                              if m == 0]


def test_cache_dit_wan_experts_get_their_own_budgets(headless, nodes):
    spec = cache_dit(nodes, load(nodes, "wan2.2"), residual_diff_threshold=1.0)
    result, _ = run(spec, request_for("wan2.2", steps=10))
    text = result.report.text()
    assert "transformer 1" in text and "transformer 2" in text


def test_cache_dit_presets_and_refusals(headless, nodes):
    spec = load(nodes, "qwen-image")
    preset = cache_dit(nodes, spec, preset="DBCache + TaylorSeer (Fn1 B0 W8)")
    assert preset.cache.enable_taylorseer and preset.cache.max_warmup_steps == 8
    with pytest.raises(OmniIncompatibleError) as info:
        cache_dit(nodes, spec, Fn_compute_blocks=2)  # the tiny model has 2 blocks
    assert "Fn_compute_blocks" in str(info.value) and "below 2" in str(info.value)
    with pytest.raises(OmniIncompatibleError) as info:
        cache_dit(nodes, spec, preset="DBCache + TaylorSeer + SCM fast (Fn8 B0 W4)")
    assert "Fn_compute_blocks" in str(info.value)


def test_one_cache_method_per_model(headless, nodes):
    spec = load(nodes, "qwen-image")
    with pytest.raises(OmniIncompatibleError) as info:
        cache_dit(nodes, teacache(nodes, spec, 0.2))
    message = str(info.value)
    assert "Apply Cache-DiT" in message and "Apply TeaCache" in message and "remove" in message
    with pytest.raises(OmniIncompatibleError):
        teacache(nodes, cache_dit(nodes, spec), 0.2)


def test_omni_facade_cache_backends(headless):
    folder = str(headless.models_dir / "diffusers" / "qwen-image")
    omni = Omni(model=folder, cache_backend="tea_cache", cache_config={"rel_l1_thresh": 0.3})
    assert omni.spec.cache == TeaCacheConfig(rel_l1_thresh=0.3)
    omni = Omni(model=folder, cache_backend="cache_dit",
                cache_config={"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "max_warmup_steps": 8,
                              "enable_taylorseer": True, "taylorseer_order": 1, "scm_steps_mask_policy": None})
    assert omni.spec.cache == CacheDiTConfig(max_warmup_steps=8, enable_taylorseer=True)
    out = omni.generate(prompt="a cat", num_inference_steps=4, width=64, height=64)
    assert "Cache-DiT" in out.report.text()
    with pytest.raises(OmniInputError, match="not a TeaCache option"):
        Omni(model=folder, cache_backend="tea_cache", cache_config={"threshold": 0.2})
