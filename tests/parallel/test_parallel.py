"""Worker groups over gloo on 127.0.0.1: every method equals the single-process result
(to parallel_support.RELATIVE_TOLERANCE)."""

from __future__ import annotations

import time

import pytest
from parallel_support import assert_same, request_for, spec_for

from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.errors import OmniIncompatibleError, OmniInterrupted, OmniWorkerError
from omni_backend.families import FAMILIES
from omni_backend.parallel.config import ParallelConfig
from omni_backend.run.sampling import RunControl

# Families that need an input image are checked under every method in tests/models/test_image_models.py.
TEXT_FAMILIES = {key: family for key, family in FAMILIES.items() if not family.requires_image}
SP_FAMILIES = [key for key, family in TEXT_FAMILIES.items() if family.supports_sequence_parallel]
CFG_FAMILIES = [key for key, family in TEXT_FAMILIES.items() if family.has_true_cfg({})]


@pytest.mark.slow
@pytest.mark.parametrize("layout", [dict(ulysses_degree=2), dict(ring_degree=2)], ids=["ulysses2", "ring2"])
def test_sequence_parallel_equals_single_process(models_dir, engine, layout):
    for family in SP_FAMILIES:
        request = request_for(family)
        single = engine.generate(spec_for(models_dir, family), request).latents
        result = engine.generate(spec_for(models_dir, family, **layout), request)
        assert_same(result.latents, single)
        assert "2 ranks" in result.report.text()


@pytest.mark.slow
def test_cfg_parallel_equals_single_process(models_dir, engine):
    for family in CFG_FAMILIES:
        request = request_for(family)
        single = engine.generate(spec_for(models_dir, family), request).latents
        assert_same(engine.generate(spec_for(models_dir, family, cfg_parallel=2), request).latents, single)


@pytest.mark.slow
def test_hybrid_ulysses_ring_on_four_ranks(models_dir, engine):
    request = request_for("qwen-image")
    single = engine.generate(spec_for(models_dir, "qwen-image"), request).latents
    hybrid = spec_for(models_dir, "qwen-image", ulysses_degree=2, ring_degree=2)
    assert_same(engine.generate(hybrid, request).latents, single)


@pytest.mark.slow
def test_progress_interrupt_and_recovery(models_dir, engine):
    spec = spec_for(models_dir, "qwen-image", ulysses_degree=2)
    request = request_for("qwen-image", steps=8)
    seen = []
    stop = {"now": False}

    def progress(step, total):
        seen.append(step)
        stop["now"] = stop["now"] or step >= 2

    with pytest.raises(OmniInterrupted):
        engine.generate(spec, request, RunControl(progress=progress, interrupted=lambda: stop["now"]))
    assert seen and max(seen) < 8, "the ranks must stop before the last step"

    seen.clear()
    started = time.monotonic()
    engine.generate(spec, request, RunControl(progress=progress))  # both ranks left at the same step
    assert seen[-1] == 8 and time.monotonic() - started < 120


@pytest.mark.slow
def test_killed_worker_gives_a_clear_error_and_the_next_run_rebuilds(models_dir, engine):
    spec = spec_for(models_dir, "flux", ring_degree=2)
    request = request_for("flux", steps=40, width=256, height=256)
    engine.generate(spec, request_for("flux"))  # the group is up
    group = engine._groups.group

    def kill_rank_one(step, _total):
        if step == 1:
            group.processes[1].kill()

    started = time.monotonic()
    with pytest.raises(OmniWorkerError) as info:
        engine.generate(spec, request, RunControl(progress=kill_rank_one))
    assert time.monotonic() - started < 60
    assert "rank 1" in str(info.value) and "next run starts a new one" in str(info.value)
    assert all(process.poll() is not None for process in group.processes), "no orphan workers"

    single = engine.generate(spec_for(models_dir, "flux"), request_for("flux")).latents
    assert_same(engine.generate(spec, request_for("flux")).latents, single)
    assert engine._groups.group is not group


@pytest.mark.slow
def test_caches_agree_across_sequence_parallel_ranks(models_dir, engine):
    request = request_for("qwen-image", steps=8)
    base = spec_for(models_dir, "qwen-image")
    teacache = TeaCacheConfig(rel_l1_thresh=0.4)
    single = engine.generate(base.replace(cache=teacache), request)
    parallel = engine.generate(base.replace(cache=teacache, parallel=ParallelConfig(ulysses_degree=2)), request)
    single_steps = single.report.sections["TeaCache"]["branches"]
    assert parallel.report.sections["TeaCache"]["branches"] == single_steps, "ranks decide like one process"
    assert any(branch["skipped"] for branch in single_steps.values())
    counts = ("blocks_run", "blocks_possible")
    assert [parallel.report.sections["TeaCache"][k] for k in counts] == \
        [single.report.sections["TeaCache"][k] for k in counts], "each rank runs every block on its shard"
    assert_same(parallel.latents, single.latents)

    cache_dit = CacheDiTConfig(residual_diff_threshold=1.0, max_warmup_steps=2)
    result = engine.generate(base.replace(cache=cache_dit, parallel=ParallelConfig(ulysses_degree=2)), request)
    section = result.report.sections["Cache-DiT"]
    assert section["cached_steps"][0], "cache-dit cached steps on both ranks"
    assert 0 < section["blocks_run"] < section["blocks_possible"], section["text"]

    # A quality target calibrates through the worker group as in one process.
    targeted = base.replace(cache=TeaCacheConfig(target_db=30.0), parallel=ParallelConfig(ulysses_degree=2))
    calibrated = engine.generate(targeted, request).report.sections["Quality target"]
    assert 2 <= calibrated["runs"] <= 7 and calibrated["psnr_db"] >= 30.0, calibrated["text"]


@pytest.mark.parametrize("layout, family, fragment", [
    (dict(ulysses_degree=3, devices=("cpu",) * 3), "qwen-image", "[1, 2, 4]"),
    (dict(ulysses_degree=2), "sd3", "no sequence-parallel plan"),
    (dict(cfg_parallel=2), "flux", "distilled"),
    (dict(ring_degree=16), "qwen-image", "devices are available"),
])
def test_impossible_layouts_are_refused_before_loading(models_dir, layout, family, fragment):
    with pytest.raises(OmniIncompatibleError) as info:
        spec_for(models_dir, family, **layout)
    assert fragment in str(info.value) and "Parallel Config" in str(info.value)


@pytest.mark.slow
def test_unload_ends_the_workers(models_dir, engine):
    engine.generate(spec_for(models_dir, "z-image", ulysses_degree=2), request_for("z-image"))
    processes = list(engine._groups.group.processes)
    engine.unload_all()
    assert all(process.poll() is not None for process in processes)
