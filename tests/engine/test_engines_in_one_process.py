"""Two engines in one process at once (issue 31, item 1).

A LoRA run on one Engine while another thread loaded a model on a second Engine failed the load
with `TypeError: Parameter.__new__() got an unexpected keyword argument '_is_hf_initialized'`:
peft loads an adapter under its own `init_empty_weights`, which replaces
`torch.nn.Module.register_parameter` for the whole process, and transformers' model, built in the
other thread meanwhile, went through that replacement. Interleaved the other way round, two such
patches restored each other's replacement and every later load in the process failed with
"Unsupported device type 'meta'". Here both happen over and over in two threads, on the tiny models,
and afterwards torch must be as it was and a fresh load must give the same output as before.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from omni_backend.engine import Engine
from omni_backend.lora import LoraSpec
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec
from omni_backend.tiny.lora import make_tiny_lora

REQUEST = GenerationRequest(prompt="a red circle", steps=2, width=64, height=48, guidance=1.0, seed=3)
LORA_FILES = 3  # LoRA runs cycle through them; with one adapter kept, every run loads one and deletes one
LOADS = 6  # model loads on the second engine
DEADLINE = 45.0  # seconds for both threads together; they stop early once the loads are done
RESTORED = "left process-wide patches in place"  # what process_lock logs when it had to repair


def _torch_globals():
    return (torch.nn.Module.register_parameter, torch.nn.Module.register_buffer, torch.get_default_dtype(),
            torch.get_default_device())


@pytest.mark.slow
def test_lora_runs_and_model_loads_on_two_engines_at_once(models_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OMNI_MAX_LOADED_LORAS", "1")  # every LoRA run loads an adapter and deletes the last one
    folder = models_dir / "diffusers" / "qwen-image"
    plain = ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu")
    loras = [plain.replace(loras=(LoraSpec(str(make_tiny_lora(folder, tmp_path / f"lora{i}.safetensors", seed=i)),
                                           1.0),)) for i in range(LORA_FILES)]
    before = _torch_globals()
    reference = Engine().generate(plain, REQUEST).latents
    lora_engine, load_engine = Engine(), Engine()
    expected = [lora_engine.generate(spec, REQUEST).latents for spec in loras]  # alone, one after the other
    assert not any(torch.equal(latents, reference) for latents in expected), "each LoRA changes the output"

    stop = threading.Event()
    failures: dict[str, list] = {"lora run": [], "load": []}
    attempts = {"lora run": 0, "load": 0}
    end = time.monotonic() + DEADLINE

    def lora_runs():
        index = 0
        while not stop.is_set() and time.monotonic() < end:
            attempts["lora run"] += 1
            try:
                latents = lora_engine.generate(loras[index % LORA_FILES], REQUEST).latents
                if not torch.equal(latents, expected[index % LORA_FILES]):
                    failures["lora run"].append(AssertionError(f"LoRA run {index} gave another output"))
            except Exception as exc:  # noqa: BLE001 - counted and asserted on below
                failures["lora run"].append(exc)
            index += 1

    def loads():
        try:
            for _ in range(LOADS):
                if time.monotonic() >= end:
                    break
                attempts["load"] += 1
                try:
                    load_engine.loaded(plain)
                except Exception as exc:  # noqa: BLE001 - counted and asserted on below
                    failures["load"].append(exc)
                load_engine.unload_all()
        finally:
            stop.set()

    threads = [threading.Thread(target=lora_runs, daemon=True), threading.Thread(target=loads, daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE + 120)  # one last run or load may still be under way at the deadline
    assert not any(thread.is_alive() for thread in threads), "a thread hangs (deadlock?)"
    summary = {what: f"{len(failures[what])}/{attempts[what]} failed" for what in attempts}
    print(f"two engines at once: {summary}")
    assert attempts["load"] >= 3 and attempts["lora run"] >= 3, f"too few rounds overlapped: {attempts}"
    assert not failures["load"] and not failures["lora run"], f"{summary}: {failures}"

    assert _torch_globals() == before, "torch is left patched"
    assert RESTORED not in caplog.text, "serialised, nothing had to be repaired afterwards"
    assert torch.equal(Engine().generate(plain, REQUEST).latents, reference), "a later load in the process works"
    assert torch.equal(load_engine.generate(loras[0], REQUEST).latents, expected[0])
    lora_engine.unload_all()
    load_engine.unload_all()


@pytest.mark.parametrize("where", ["register_parameter", "default_dtype"])
def test_a_patch_left_behind_inside_the_lock_is_undone(where, caplog):
    """An exception may leave a process-wide patch in place (a context manager that did not restore, or
    two that restored each other's): the lock's holder finds it changed on release and restores it."""
    from omni_backend.system.process_lock import process_lock

    before = _torch_globals()
    caplog.set_level("WARNING", logger="omni_diffusion")
    with pytest.raises(RuntimeError, match="boom"):
        with process_lock():
            with process_lock():  # re-entrant: nested sections of one thread do not wait on themselves
                if where == "register_parameter":
                    torch.nn.Module.register_parameter = lambda *args, **kwargs: None
                else:
                    torch.set_default_dtype(torch.float64)
                raise RuntimeError("boom")
    assert _torch_globals() == before
    assert RESTORED in caplog.text and ("register_parameter" if where == "register_parameter" else "dtype") in caplog.text
    module = torch.nn.Linear(2, 2)
    assert module.weight.dtype == torch.float32 and not module.weight.is_meta
