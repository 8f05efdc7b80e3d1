"""Interrupts stop a run at once and leave the engine usable; loaded pipelines are reused."""

from __future__ import annotations

import threading

import pytest

from omni_backend.engine import default_engine
from omni_backend.errors import OmniInterrupted
from omni_backend.request import GenerationRequest
from omni_backend.run.sampling import RunControl


def test_interrupt_mid_run_stops_at_that_step_and_next_run_works(headless, nodes, tiny_settings):
    (spec,) = nodes["OmniLoadModel"]().load("qwen-image", "auto", "auto")
    request = GenerationRequest(prompt="a red circle", steps=6, width=64, height=48, guidance=4.0)
    seen = []
    stop = threading.Event()

    def progress(step, total):
        seen.append(step)
        if step == 2:
            stop.set()  # the user presses Cancel while step 3 would start

    with pytest.raises(OmniInterrupted):
        default_engine().generate(spec, request, RunControl(progress=progress, interrupted=stop.is_set))
    assert max(seen) == 2, "no step may run after the interrupt was seen"

    seen.clear()
    result = default_engine().generate(spec, request, RunControl(progress=progress))
    assert seen[-1] == 6 and result.latents.shape[0] == 1


def test_sample_node_honours_the_host_interrupt(headless, nodes, tiny_settings):
    (spec,) = nodes["OmniLoadModel"]().load("z-image", "auto", "auto")
    headless.stop.set()
    with pytest.raises(OmniInterrupted):  # headless, the host's interrupt is ours
        nodes["OmniSample"]().sample(spec, **tiny_settings("z-image"))
    headless.stop.clear()
    assert nodes["OmniSample"]().sample(spec, **tiny_settings("z-image"))["result"][0]["samples"].numel()


def test_second_run_reuses_loaded_weights(headless, nodes, tiny_settings):
    engine = default_engine()
    (spec,) = nodes["OmniLoadModel"]().load("sd3", "auto", "auto")
    nodes["OmniSample"]().sample(spec, **tiny_settings("sd3"))
    loads = engine.pipelines.load_count
    nodes["OmniSample"]().sample(spec, **tiny_settings("sd3", seed=7, prompt="another prompt"))
    assert engine.pipelines.load_count == loads, "a new seed/prompt must not reload weights"


def test_cache_is_bounded_and_unload_frees(headless, nodes, tiny_settings):
    engine = default_engine()
    for key in ("sd3", "z-image"):
        (spec,) = nodes["OmniLoadModel"]().load(key, "auto", "auto")
        nodes["OmniSample"]().sample(spec, **tiny_settings(key))
    assert len(engine.pipelines) == engine.pipelines.max_entries == 1
    engine.unload_all()
    assert len(engine.pipelines) == 0
