"""Caches by quality: a PSNR target calibrates the threshold once per model and shape, meets the target,
is refused where it cannot work, and every family's TeaCache coefficients can skip within the node's range."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from cache_support import assert_report_counts_the_work

from omni_backend.cache import CACHE_BACKENDS, CacheDiTConfig, TeaCacheConfig
from omni_backend.cache.calibration import CACHED_RUNS, MARGIN_DB, calibrate, psnr_db
from omni_backend.cache.teacache import coefficient_floor
from omni_backend.cache.teacache_hooks import (
    TeaCacheDecider,
    TeaCacheSchedule,
    TeaCacheState,
)
from omni_backend.blocks.diagnostics import count_block_work
from omni_backend.engine import Engine
from omni_backend.errors import OmniInputError, OmniInterrupted
from omni_backend.families import FAMILIES
from omni_backend.request import GenerationRequest
from omni_backend.run.runner import Generation
from omni_backend.run.sampling import RunControl, RunReport
from omni_backend.spec import ModelSpec

NODE_DEFAULT, NODE_MAX = 0.2, 2.0  # Apply TeaCache's rel_l1_thresh


@pytest.fixture(scope="module")
def spec(models_dir):
    return ModelSpec.from_folder(str(models_dir / "diffusers" / "qwen-image"), dtype="fp32", device="cpu")


def request(**changes):
    values = dict(prompt="a red circle", negative_prompt="", steps=10, guidance=1.0, width=64, height=64)
    return GenerationRequest(**{**values, **changes})


@pytest.mark.parametrize("cache", [TeaCacheConfig(target_db=30.0), CacheDiTConfig(target_db=30.0)],
                         ids=["teacache", "cache-dit"])
def test_a_target_is_calibrated_once_met_and_reused(engine, spec, cache):
    uncached = engine.generate(spec, request())
    steps_seen = []
    control = RunControl(progress=lambda step, total: steps_seen.append((step, total)))
    first = engine.generate(spec.replace(cache=cache), request(), control)
    section = first.report.sections["Quality target"]
    assert not section["reused"] and 2 <= section["runs"] <= CACHED_RUNS + 1, section["text"]
    assert section["threshold"] > 0 and section["psnr_db"] >= 30.0, section["text"]
    assert "at least 30 dB" in section["text"]
    quality = psnr_db(engine.decode(spec, first.latents), engine.decode(spec, uncached.latents))
    assert quality >= 30.0, "the user's run meets the target it asked for"
    assert first.report.sections[cache.label]["blocks_run"] < first.report.sections[cache.label]["blocks_possible"]
    totals = {total for _step, total in steps_seen}
    assert len(totals) == 1 and [s for s, _t in steps_seen] == sorted(s for s, _t in steps_seen), \
        "one progress bar across the calibration and the run, never going back"
    assert steps_seen[-1][0] == steps_seen[-1][1]

    # Another prompt and seed, same model and shape: the threshold is reused, one run only.
    with count_block_work(engine.loaded(spec).pipe, spec.family) as work:
        again = engine.generate(spec.replace(cache=cache), request(prompt="a blue square", seed=3))
    reused = again.report.sections["Quality target"]
    assert reused["reused"] and reused["runs"] == 0 and reused["threshold"] == section["threshold"]
    assert work.possible == 2 * 10, "one run of 10 steps on the 2-block model, no calibration runs"
    assert_report_counts_the_work(again, cache, work, dataclasses.replace(work, executed=work.possible))

    # Another step count decides another threshold: it calibrates again.
    other = engine.generate(spec.replace(cache=cache), request(steps=12)).report.sections["Quality target"]
    assert not other["reused"] and other["runs"] >= 2


def test_a_high_target_is_met_on_the_real_model(engine, spec):
    uncached = engine.generate(spec, request(steps=9))
    result = engine.generate(spec.replace(cache=TeaCacheConfig(target_db=60.0)), request(steps=9))
    section = result.report.sections["Quality target"]
    quality = psnr_db(engine.decode(spec, result.latents), engine.decode(spec, uncached.latents))
    assert quality >= 60.0 and quality == pytest.approx(section["psnr_db"]), section["text"]
    assert all(tried_db >= 60.0 for threshold, tried_db, _s in section["tried"] if threshold <= section["threshold"])


class Quality:
    """How a stand-in model's image degrades with the threshold: for checking the bisection itself, where
    the tiny models' images barely change (their PSNRs all sit above 55 dB)."""

    def __init__(self, spec, db_at):
        self.spec, self.db_at, self.thresholds = spec, db_at, []

    def generate(self, spec, _request, _control):
        threshold = spec.cache.rel_l1_thresh if spec.cache is not None else 0.0
        self.thresholds.append(threshold)
        report = RunReport()
        if spec.cache is not None:
            report.add("TeaCache", {"blocks_run": 10 - int(8 * threshold / 2), "blocks_possible": 10})
        return Generation(latents=torch.tensor(self.db_at(threshold)), family="qwen-image", request=request(),
                          report=report)

    def decode(self, _spec, latents):  # pixels whose PSNR against zeros is the stand-in's dB
        return torch.full((4,), 10 ** (-float(latents) / 20)) if math.isfinite(float(latents)) else torch.zeros(4)


def test_the_bisection_keeps_the_largest_threshold_that_meets_the_target(spec):
    model = Quality(spec, lambda t: math.inf if t == 0 else 50.0 - 40.0 * t)  # 35 + MARGIN_DB dB at `edge`
    found = calibrate(model.generate, model.decode, spec.replace(cache=TeaCacheConfig(target_db=35.0)), request(),
                      RunControl())
    edge = (50.0 - 35.0 - MARGIN_DB) / 40.0
    assert found.runs == len(model.thresholds) <= CACHED_RUNS + 1 and model.thresholds[0] == 0.0
    assert edge / 1.16 < found.threshold <= edge and found.psnr_db >= 35.0 + MARGIN_DB


def test_an_unreachable_target_runs_uncached_and_says_so(spec):
    model = Quality(spec, lambda t: math.inf if t == 0 else 20.0)
    cache = TeaCacheConfig(target_db=35.0)
    found = calibrate(model.generate, model.decode, spec.replace(cache=cache), request(), RunControl())
    assert found.threshold == 0.0 and found.runs == CACHED_RUNS + 1
    assert "ran uncached" in found.text(cache, 35.0, reused=False)


@pytest.mark.parametrize("cache, changes, fragment", [
    (TeaCacheConfig(target_db=35.0), dict(steps=4), "4-step schedule"),
    (CacheDiTConfig(target_db=35.0, max_warmup_steps=9), dict(steps=10), "warm-up steps"),
    (TeaCacheConfig(target_db=35.0, start_fraction=0.8, end_fraction=0.9), dict(steps=10), "start_percent"),
], ids=["distilled-4-steps", "all-warm-up", "narrow-window"])
def test_a_target_that_cannot_be_calibrated_is_refused_before_any_run(engine, spec, cache, changes, fragment):
    with count_block_work(engine.loaded(spec).pipe, spec.family) as work:
        with pytest.raises(OmniInputError) as info:
            engine.generate(spec.replace(cache=cache), request(**changes))
    assert info.value.input_name == "target_db" and fragment in str(info.value) and "Fix:" in str(info.value)
    assert work.possible == 0, "refused before any run"


def test_cancel_during_calibration_keeps_nothing_and_the_next_run_calibrates(engine, spec):
    cache = TeaCacheConfig(target_db=33.0)
    calls = []

    def interrupted():
        calls.append(1)
        return len(calls) > 15  # somewhere in the second calibration run

    with pytest.raises(OmniInterrupted):
        engine.generate(spec.replace(cache=cache), request(), RunControl(interrupted=interrupted))
    assert engine.calibrations.get(engine.calibrations.key(spec.replace(cache=cache), request())) is None
    section = engine.generate(spec.replace(cache=cache), request()).report.sections["Quality target"]
    assert not section["reused"] and section["psnr_db"] >= 33.0


def test_targets_are_checked_like_every_value():
    for bad in (-1.0, 61.0, math.nan, "35"):
        with pytest.raises(OmniInputError) as info:
            TeaCacheConfig(target_db=bad)
        assert info.value.input_name == "target_db"
    assert CacheDiTConfig(target_db=35).target_db == 35.0
    # The Python API takes it with vLLM-Omni's other keys, and refuses it the same way.
    assert CACHE_BACKENDS["tea_cache"]({"rel_l1_thresh": 0.2, "target_db": 40}).target_db == 40.0
    with pytest.raises(OmniInputError, match="target_db"):
        CACHE_BACKENDS["cache_dit"]({"target_db": 75})


TEACACHE_COEFFICIENTS = {key: family.teacache_coefficients for key, family in FAMILIES.items()
                         if family.teacache_coefficients is not None}


@pytest.mark.parametrize("family_key", sorted(TEACACHE_COEFFICIENTS))
def test_every_familys_coefficients_can_skip_within_the_nodes_range(family_key):
    """The floor is the least one step adds to the accumulated change (at the polynomial's minimum over
    relative changes 0..1). A threshold below it never skips; the node's range must reach well above it."""
    coefficients = TEACACHE_COEFFICIENTS[family_key]
    floor = coefficient_floor(coefficients)
    assert 3 * floor < NODE_MAX, f"{family_key}: floor {floor:.3f} leaves no room for three skips in a row"

    # Steps whose input changes by the polynomial's easiest amount: at the node's largest threshold some
    # steps skip; at the default they skip exactly when the floor is below it.
    import numpy as np

    changes = np.linspace(0.0, 1.0, 20001)
    easiest = float(changes[np.abs(np.polyval(coefficients, changes)).argmin()])

    def skipped_at(threshold: float) -> int:
        """Skips in 12 steps whose modulated input changes by `easiest` (relative L1) each time."""
        step = [0]
        decider = TeaCacheDecider(lambda *_: torch.full((8,), (1.0 + easiest) ** step[0]), coefficients,
                                  threshold, TeaCacheSchedule(12, 0.0, 1.0, True))
        state = TeaCacheState()
        for step[0] in range(12):
            state.residuals[0] = (torch.zeros(8), None)  # a residual is always there to reuse
            decider.decide(state, "cond", None, (), {}, torch.zeros(8))
        return len(decider.steps["cond"]["skipped"])

    assert skipped_at(NODE_MAX) >= 3
    assert (skipped_at(NODE_DEFAULT) > 0) == (floor < NODE_DEFAULT)


def test_a_teacache_that_cannot_skip_says_why(engine, models_dir):
    """Stable-Audio's published polynomial adds at least 0.30 per step: at the default 0.2 it never skips,
    and the report says so and what to do, instead of reporting a silent 1.00x."""
    floor = coefficient_floor(FAMILIES["stable-audio"].teacache_coefficients)
    assert floor > NODE_DEFAULT
    spec = ModelSpec.from_folder(str(models_dir / "diffusers" / "stable-audio"), dtype="fp32", device="cpu")
    result = engine.generate(spec.replace(cache=TeaCacheConfig()), GenerationRequest.of(
        prompt="rain", steps=8, guidance=1.0, seconds=1.0))
    text = result.report.sections["TeaCache"]["text"]
    assert text.startswith("skipped nothing") and f"at least {floor:.3g} per step" in text and "quality target" in text


def test_calibrations_outlive_the_process_and_changed_weights_calibrate_again(models_dir, tmp_path):
    import os
    import shutil

    folder = shutil.copytree(models_dir / "diffusers" / "qwen-image", tmp_path / "qwen-image")
    spec = ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu").replace(cache=TeaCacheConfig(target_db=35))
    kept = tmp_path / "user" / "cache-calibrations.json"
    first = Engine()
    first.calibrations.use_file(kept)
    found = first.generate(spec, request()).report.sections["Quality target"]
    first.unload_all()
    assert not found["reused"] and kept.exists()

    restarted = Engine()  # as after a ComfyUI restart
    restarted.calibrations.use_file(kept)
    again = restarted.generate(spec, request()).report.sections["Quality target"]
    assert again["reused"] and again["threshold"] == found["threshold"]

    weights = next(folder.rglob("transformer/*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    changed = Engine()
    changed.calibrations.use_file(kept)
    assert not changed.generate(spec, request()).report.sections["Quality target"]["reused"]
    for engine in (restarted, changed):
        engine.unload_all()


@pytest.mark.parametrize("content", ["not json", '{"calibrations": []}', '[1, 2]',
                                     '{"calibrations": {"k": {"threshold": NaN, "psnr_db": 40, "skipped": 0.5, '
                                     '"runs": 3}}}'], ids=["text", "list-of-entries", "list", "nan-threshold"])
def test_a_damaged_calibration_file_is_not_trusted_and_nothing_breaks(engine, spec, tmp_path, caplog, content):
    kept = tmp_path / "cache-calibrations.json"
    kept.write_text(content, encoding="utf-8")
    calibrations = type(engine.calibrations)(kept)
    assert calibrations.get(calibrations.key(spec.replace(cache=TeaCacheConfig(target_db=35)), request())) is None
    assert "could not be read" in caplog.text
