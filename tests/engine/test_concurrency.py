"""Two runs at once in one process (threads of a host application, two engines, the Python API):
loading and cache enabling are serialised where the libraries make state global, and nothing stays
patched afterwards."""

from __future__ import annotations

import threading

import pytest
import torch

from omni_backend.cache import CacheDiTConfig
from omni_backend.engine import Engine, default_engine
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec

REQUEST = GenerationRequest(prompt="a red circle", negative_prompt="blurry", steps=6, guidance=4.0, width=64,
                            height=64)


def in_threads(*jobs):
    results, errors = [None] * len(jobs), []

    def run(index, job):
        try:
            results[index] = job()
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    return results


@pytest.mark.slow
def test_concurrent_loads_leave_torch_unpatched_and_load_correctly(models_dir):
    original = (torch.nn.Module.register_parameter, torch.nn.Module.register_buffer)
    folder = str(models_dir / "diffusers" / "qwen-image")
    spec = ModelSpec.from_folder(folder, dtype="fp32", device="cpu")
    reference = Engine().generate(spec, REQUEST).latents
    engines = [Engine() for _ in range(4)]
    in_threads(*[(lambda engine=engine: engine.loaded(spec)) for engine in engines])
    assert (torch.nn.Module.register_parameter, torch.nn.Module.register_buffer) == original
    for engine in engines:
        assert torch.equal(engine.generate(spec, REQUEST).latents, reference), "every pipeline got its weights"
    assert torch.equal(Engine().generate(spec, REQUEST).latents, reference), "and later loads still work"


@pytest.mark.slow
def test_cache_dit_runs_and_plain_runs_of_one_pipeline_class_at_once(models_dir):
    """cache-dit patches the pipeline class: unguarded, two cached runs at once broke with
    "'QwenImagePipeline' object has no attribute '_context_manager'" and so did every later run."""
    request = GenerationRequest(prompt="a red circle", negative_prompt="blurry", steps=12, guidance=4.0,
                                width=128, height=128)
    plain = ModelSpec.from_folder(str(models_dir / "diffusers" / "qwen-image"), dtype="fp32", device="cpu")
    specs = [plain, plain.replace(cache=CacheDiTConfig(residual_diff_threshold=1.0, max_warmup_steps=1)),
             plain.replace(cache=CacheDiTConfig(residual_diff_threshold=0.05, max_warmup_steps=3))]
    engines = [Engine() for _ in specs]
    alone = [engine.generate(spec, request) for engine, spec in zip(engines, specs)]
    assert any(alone[1].report.sections["Cache-DiT"]["cached_steps"]), "cache-dit skipped work"
    for _ in range(3):
        together = in_threads(*[(lambda e=engine, s=spec: e.generate(s, request))
                                for engine, spec in zip(engines, specs)])
        for run, reference in zip(together, alone):
            assert torch.equal(run.latents, reference.latents)
    assert torch.equal(default_engine().generate(plain, request).latents, alone[0].latents), "nothing stays patched"
