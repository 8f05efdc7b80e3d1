"""Stable-Audio-Open end to end on its tiny model: Sample -> Decode -> ComfyUI AUDIO -> FLAC, the plain
pipeline's output, the refusals, per-step progress and Cancel, caches, LoRA (with peft).

The tiny model (StableAudio.build_tiny) generates a 5.12 s window: 128 latents x 32 samples at 800 Hz,
stereo. CFG-parallel, offload and FP8 run in the registry-wide tests (test_parallel, test_memory),
and the shipped workflow in test_workflows.
"""

from __future__ import annotations

import pytest
import torch

from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.errors import OmniIncompatibleError, OmniInputError, OmniInterrupted
from omni_backend.lora.config import LoraSpec
from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.run.sampling import RunControl
from omni_backend.spec import ModelSpec

FAMILY = "stable-audio"
RATE, WINDOW = 800, 128 * 32  # the tiny model's sample rate and window (samples)


def settings(**changes) -> dict:
    values = dict(prompt="a hammer hitting wood", negative_prompt="low quality", seed=3, steps=3, guidance=7.0,
                  width=1024, height=1024, frames=1, batch_size=2, seconds=2.0, start=0.5)
    return {**values, **changes}


@pytest.fixture(scope="module")
def spec(models_dir):
    return ModelSpec.from_folder(str(models_dir / "diffusers" / FAMILY), dtype="fp32", device="cpu")


def request(**changes) -> GenerationRequest:
    values = settings(**changes)
    values.pop("width"), values.pop("height")
    window = {name: values.pop(name) for name in ("seconds", "start")}
    return GenerationRequest(**values, options=window)


def test_graph_gives_the_plain_pipelines_audio_and_save_audio_writes_it(headless, nodes):
    from omni_diffusion_nodes.headless.core_nodes import SaveAudio
    from omni_diffusion_nodes.nodes.comfy_bridge import ExecutionBlocker

    from omni_backend.files.audio_files import read_audio

    (spec,) = nodes["OmniLoadModel"]().load(FAMILY, "fp32", "cpu")
    chosen = settings()
    out = nodes["OmniSample"]().sample(spec, **chosen)
    latent = out["result"][0]
    assert latent["samples"].shape == (2, 8, 128)  # ComfyUI's audio LATENT: [B, C, L], the whole window
    assert latent["type"] == "audio" and latent["downscale_ratio_temporal"] == 32
    assert latent["audio_window"] == [400, 2000]  # 0.5 s .. 2.5 s at 800 Hz
    images, audio, masks = nodes["OmniVAEDecode"]().decode(spec, latent, 0, 64)["result"]
    assert isinstance(images, ExecutionBlocker) and "audio output" in images.message
    assert isinstance(masks, ExecutionBlocker) and "audio output" in masks.message
    assert audio["sample_rate"] == RATE
    assert audio["waveform"].shape == (2, 2, 1600) and audio["waveform"].dtype == torch.float32
    assert audio["waveform"].std() > 1e-4

    from diffusers import StableAudioPipeline

    pipe = StableAudioPipeline.from_pretrained(str(headless.models_dir / "diffusers" / FAMILY),
                                               local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        reference = pipe(prompt=chosen["prompt"], negative_prompt=chosen["negative_prompt"], num_inference_steps=3,
                         guidance_scale=7.0, audio_start_in_s=0.5, audio_end_in_s=2.5, num_waveforms_per_prompt=2,
                         generator=torch.Generator().manual_seed(3)).audios
    assert reference.shape == audio["waveform"].shape
    assert (reference - audio["waveform"]).abs().max() < 1e-5

    saved = SaveAudio().save_flac(audio, filename_prefix="audio/test")
    files = [headless.output_dir / "audio" / entry["filename"] for entry in saved["ui"]["audio"]]
    assert [f.name for f in files] == ["test_00001_.flac", "test_00002_.flac"]
    for index, path in enumerate(files):
        back = read_audio(path)
        assert back["sample_rate"] == RATE and back["waveform"].shape == (1, 2, 1600)
        # FLAC holds 24-bit PCM: the samples come back to within one step of 2^-23.
        assert (back["waveform"][0] - audio["waveform"][index].clamp(-1, 1)).abs().max() < 1e-6


def test_wrong_inputs_are_refused_with_the_fix(headless, nodes, spec):
    sample = nodes["OmniSample"]
    picture = torch.rand(1, 32, 32, 3)
    cases = [  # (changed inputs, the input the error names, a word of its fix)
        (dict(image=picture), "image", "disconnect"),
        (dict(last_image=picture), "last_image", "disconnect"),
        (dict(frames=5), "frames", "set frames to 1"),
        (dict(seconds=6.0, start=0.0), "seconds", "at most 5.12"),
        (dict(seconds=2.0, start=4.0), "start", "at most 3.12"),
        (dict(seconds=0.0, start=5.5), "start", "below 5.12"),
    ]
    for changes, name, fix in cases:
        with pytest.raises(OmniInputError) as caught:
            sample.check_inputs(spec, **settings(**changes))
        assert caught.value.input_name == name and fix in str(caught.value), (changes, str(caught.value))
    assert sample.check_inputs(spec, **settings(seconds=0.0, start=0.0)).options["seconds"] == 0.0  # the whole window

    (image_model,) = nodes["OmniLoadModel"]().load("z-image", "fp32", "cpu")
    for name in ("seconds", "start"):
        with pytest.raises(OmniInputError, match="Z-Image takes no option") as caught:
            sample.check_inputs(image_model, **settings(width=64, height=64, batch_size=1, **{"seconds": 0.0,
                                                                                              "start": 0.0, name: 1.0}))
        assert caught.value.input_name == name

    for layout, rule in ((dict(cfg_parallel=2, vae_patch_parallel=2), "parallel.vae_patches_audio"),
                         (dict(ulysses_degree=2), "parallel.sequence_plan"),
                         (dict(tensor_parallel=2), "parallel.tensor_plan")):
        with pytest.raises(OmniIncompatibleError) as caught:
            spec.replace(parallel=ParallelConfig(**layout))
        assert caught.value.rule == rule


def test_an_image_models_audio_output_stops_save_audio(headless):
    from omni_diffusion_nodes.headless.builder import WorkflowBuilder
    from omni_diffusion_nodes.headless.node_classes import all_node_classes
    from omni_diffusion_nodes.headless.runner import run_workflow

    builder = WorkflowBuilder(all_node_classes())
    model = builder.add("OmniLoadModel", model_name="z-image")
    sample = builder.add("OmniSample", prompt="a red circle", steps=1, width=64, height=64)
    decode = builder.add("OmniVAEDecode")
    save = builder.add("SaveAudio")
    builder.chain((model, sample, "model"), (model, decode, "model"), (sample, decode, "samples"))
    builder.connect(decode, save, "audio", output_slot=1)
    with pytest.raises(Exception, match="Execution Blocked: Z-Image makes images, not audio"):
        run_workflow(builder.to_json())


def test_progress_reaches_every_step_and_cancel_stops_between_steps(engine, spec):
    plain = engine.generate(spec, request(steps=4, batch_size=1)).latents
    seen = []
    engine.generate(spec, request(steps=4, batch_size=1), RunControl(progress=lambda step, total: seen.append(step)))
    assert seen == [0, 1, 2, 3, 4]

    seen.clear()
    with pytest.raises(OmniInterrupted):
        engine.generate(spec, request(steps=4, batch_size=1),
                        RunControl(progress=lambda step, total: seen.append(step), interrupted=lambda: 2 in seen))
    assert max(seen) == 2, "the run must stop at the step the user cancelled in"
    assert torch.equal(engine.generate(spec, request(steps=4, batch_size=1)).latents, plain)


def count_block_runs(pipe):
    """Calls of the last block's attention (a skipped or cached step does not reach it)."""
    calls = []
    handle = pipe.transformer.transformer_blocks[-1].attn1.to_q.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("cache", [TeaCacheConfig(rel_l1_thresh=60.0),
                                   CacheDiTConfig(max_warmup_steps=1, residual_diff_threshold=10.0,
                                                  max_continuous_cached_steps=-1)],
                         ids=["teacache", "cache_dit"])
def test_caches_skip_steps_and_leave_nothing_behind(engine, spec, cache):
    steps = 8
    pipe = engine.loaded(spec).pipe
    base = engine.generate(spec, request(steps=steps, batch_size=1)).latents
    calls, handle = count_block_runs(pipe)
    try:
        cached = engine.generate(spec.replace(cache=cache), request(steps=steps, batch_size=1))
    finally:
        handle.remove()
    assert 0 < len(calls) < steps, f"the last block ran {len(calls)} times in {steps} steps"
    error = ((cached.latents - base).abs().max() / base.abs().max()).item()
    assert 0 < error < 1, error  # lossy but the same audio: report how far it moved
    print(f"{cache.label}: last block ran {len(calls)}/{steps} steps, relative error {error:.3g}; "
          f"{cached.report.sections[cache.label]['text']}")
    assert torch.equal(engine.generate(spec, request(steps=steps, batch_size=1)).latents, base)
    modules = [pipe.transformer, *pipe.transformer.transformer_blocks]
    # cache-dit's undo leaves the class's own forward bound on the instance: the same function, no hook.
    left = [type(m).__name__ for m in modules if hasattr(m, "_diffusers_hook")
            or getattr(m.__dict__.get("forward"), "__func__", type(m).forward) is not type(m).forward]
    assert not left, f"hooks were left: {left}"


def test_lora_with_peft_strengths_stacking_and_file_layouts(engine, spec, models_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from omni_backend.lora.adapters import STATE_KEY
    from omni_backend.tiny.lora import make_tiny_lora

    folder = models_dir / "diffusers" / FAMILY
    diffusers_file = make_tiny_lora(folder, tmp_path / "style.safetensors", rank=4, alpha=2.0, seed=5)
    # The same adapter as lora_down/lora_up with per-layer alphas (how kohya-style trainers save).
    kohya = {}
    for key, value in load_file(str(diffusers_file)).items():
        module, part = key.rsplit(".lora_", 1)
        kohya[f"{module}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value
        kohya[f"{module}.alpha"] = torch.tensor(2.0)
    save_file(kohya, str(tmp_path / "style_kohya.safetensors"))

    def run(*loras):
        return engine.generate(spec.replace(loras=tuple(LoraSpec(str(tmp_path / n), s) for n, s in loras)),
                               request(batch_size=1)).latents

    base = run()
    full = run(("style.safetensors", 1.0))
    assert (full - base).abs().max() > 1e-3
    assert torch.equal(run(("style.safetensors", 0.0)), base)
    assert torch.allclose(run(("style.safetensors", 0.5), ("style.safetensors", 0.5)), full, atol=1e-5)
    assert torch.allclose(run(("style_kohya.safetensors", 1.0)), full, atol=1e-5)
    assert torch.equal(run(), base), "a run without the LoRA is the base model exactly"
    adapters = engine.loaded(spec).state[STATE_KEY]
    assert adapters.file_loads == 2, "each file is read once and kept loaded between runs"

    foreign = {f"diffusion_model.{k.removeprefix('transformer.')}": v
               for k, v in load_file(str(diffusers_file)).items()}
    save_file(foreign, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(OmniInputError, match="has no keys for Stable-Audio-Open's transformer"):
        run(("foreign.safetensors", 1.0))
    assert torch.equal(run(), base), "a refused file leaves nothing behind"


def test_omni_facade_returns_audio(headless, engine):
    from omni_backend import Omni

    omni = Omni(model=str(headless.models_dir / "diffusers" / FAMILY), engine=engine)
    out = omni.generate(prompt="rain on a tin roof", num_inference_steps=2, audio_start_in_s=1.0, audio_end_in_s=2.5)
    assert out.images == [] and out.audio["sample_rate"] == RATE
    assert out.audio["waveform"].shape == (1, 2, 1200)


@pytest.mark.slow
def test_cfg_parallel_on_two_ranks_equals_one_process(engine, spec):
    """Each rank runs one half of the pipeline's batched CFG call; the group also decodes the AUDIO."""
    from omni_backend.run.decode import decode_to_audio
    from omni_backend.run.runner import DecodeSettings

    from parallel_support import assert_same

    chosen = request(batch_size=1, steps=2)
    single = engine.generate(spec, chosen)
    split_spec = spec.replace(parallel=ParallelConfig(cfg_parallel=2))
    split = engine.generate(split_spec, chosen)
    assert_same(split.latents, single.latents)  # float32, up to the order of reductions (batch 1 vs 2)
    assert "2 ranks (cfg 2)" in split.report.text()
    ours, _ = decode_to_audio(engine, split_spec, single.latent(split_spec), DecodeSettings())
    theirs, _ = decode_to_audio(engine, spec, single.latent(spec), DecodeSettings())
    assert ours["waveform"].shape == (1, 2, 1600)
    assert_same(ours["waveform"], theirs["waveform"])
