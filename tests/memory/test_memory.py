"""Offload/FP8: offload is lossless and keeps only its window resident; FP8 halves the weights it touches.

Residency is asserted on storage: a parameter is resident when its storage can hold its elements.
On the CPU the execution device is the offload device, and offload still gives released
parameters no storage of their own, so the schedule itself is what these tests check.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from omni_backend.engine import Engine
from omni_backend.errors import OmniIncompatibleError, OmniInputError
from omni_backend.families import FAMILIES
from omni_backend.memory import MemoryConfig
from omni_backend.memory.apply import memory_state
from omni_backend.memory.auto_offload import GIB, choose_offload
from omni_backend.memory.fp8 import FP8Linear, quantize_per_channel, quantize_per_token, w8a8_linear
from omni_backend.memory.fp8_layers import dit_targets, quantize_linears
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec

PSNR_FLOOR_DB = 40.0  # FP8 weight-only vs the unquantized tiny model, decoded images (measured: 48-79 dB)
QWEN_BLOCKS = 6


def has_storage(param: torch.Tensor) -> bool:
    return param.untyped_storage().nbytes() >= param.numel() * param.element_size()


def resident_blocks(blocks) -> list[int]:
    found = []
    for index, block in enumerate(blocks):
        states = {has_storage(p) for p in block.parameters()}
        assert len(states) == 1, f"block {index} is partly resident"
        if states == {True}:
            found.append(index)
    return found


def request_for(family_key: str, **overrides) -> GenerationRequest:
    values = dict(prompt="a red circle", negative_prompt="blurry", steps=2, guidance=4.0, width=64, height=48, seed=3)
    values.update(FAMILIES[family_key].tiny_request_overrides())
    values.update(overrides)
    return GenerationRequest.of(**values)


def spec_for(folder, memory=None) -> ModelSpec:
    spec = ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu")
    return spec.replace(memory=memory) if memory is not None else spec


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    mse = torch.mean((image - reference) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


@pytest.fixture(scope="module")
def qwen_six_blocks(models_dir, tmp_path_factory):
    """The tiny Qwen-Image with a 6-block DiT, so a window of 1-3 blocks is a real subset."""
    from diffusers import QwenImageTransformer2DModel

    folder = tmp_path_factory.mktemp("qwen6") / "qwen-image-6"
    shutil.copytree(models_dir / "diffusers" / "qwen-image", folder)
    torch.manual_seed(1)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=QWEN_BLOCKS, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=32, axes_dims_rope=(8, 4, 4))
    shutil.rmtree(folder / "transformer")
    transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    return folder


def folder_of(models_dir, key):
    return models_dir / "diffusers" / key


# ---- offload is lossless ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family_key", [key for key, family in FAMILIES.items() if not family.requires_image])
def test_offload_output_equals_plain_output(models_dir, family_key):
    engine = Engine(max_loaded=1)
    folder = folder_of(models_dir, family_key)
    request = request_for(family_key)
    plain = engine.generate(spec_for(folder), request).latents
    for memory in (MemoryConfig(offload="model"), MemoryConfig(offload="layerwise", blocks_on_device=1)):
        result = engine.generate(spec_for(folder, memory), request)
        assert torch.equal(result.latents, plain), memory.describe()
        assert result.report.sections["memory"]["offload"] == memory.offload


def test_model_offload_components_take_turns(models_dir):
    """During the DiT only the DiT holds weights; during encoding only the text encoder; decoding: the VAE."""
    engine = Engine()
    spec = spec_for(folder_of(models_dir, "qwen-image"), MemoryConfig(offload="model"))
    request = request_for("qwen-image")
    pipe = engine.loaded(spec).pipe
    components = {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    assert set(components) == {"text_encoder", "transformer", "vae"}
    seen = {}

    def watch(name):
        def hook(*_):
            seen.setdefault(name, set()).add(
                tuple(sorted(n for n, m in components.items() if any(has_storage(p) for p in m.parameters()))))
        return hook

    handles = [pipe.transformer.transformer_blocks[0].attn.to_q.register_forward_pre_hook(watch("transformer")),
               pipe.text_encoder.model.language_model.layers[0].register_forward_pre_hook(watch("text_encoder")),
               pipe.vae.decoder.register_forward_pre_hook(watch("vae"))]
    try:
        latents = engine.generate(spec, request).latents
        pixels = engine.decode(spec, latents)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"transformer": {("transformer",)}, "text_encoder": {("text_encoder",)}, "vae": {("vae",)}}
    assert memory_state(pipe).turns.turns[-3:] == ["text_encoder", "transformer", "vae"]
    # ...and the decoded image is the plain one.
    plain_spec = spec_for(folder_of(models_dir, "qwen-image"))
    plain = engine.decode(plain_spec, engine.generate(plain_spec, request).latents)
    assert torch.equal(pixels, plain)


def test_wan_two_experts_take_turns(models_dir):
    engine = Engine()
    spec = spec_for(folder_of(models_dir, "wan2.2"), MemoryConfig(offload="model"))
    pipe = engine.loaded(spec).pipe
    engine.generate(spec, request_for("wan2.2", steps=4))
    turns = memory_state(pipe).turns.turns
    # boundary_ratio 0.875: the high-noise expert (transformer) first, then transformer_2.
    assert turns == ["text_encoder", "transformer", "transformer_2"]
    assert not any(has_storage(p) for p in pipe.transformer.parameters())


@pytest.mark.parametrize("window", [1, 2, 3])
def test_layerwise_only_the_window_is_resident_during_each_block(qwen_six_blocks, window):
    engine = Engine()
    spec = spec_for(qwen_six_blocks, MemoryConfig(offload="layerwise", blocks_on_device=window))
    pipe = engine.loaded(spec).pipe
    blocks = list(pipe.transformer.transformer_blocks)
    outside = [p for name, p in pipe.transformer.named_parameters() if not name.startswith("transformer_blocks.")]
    observed = []

    def watch(index):
        def hook(*_):
            assert all(has_storage(p) for p in outside), "the DiT's non-block weights must stay resident"
            observed.append((index, resident_blocks(blocks)))
        return hook

    handles = [block.img_mod.register_forward_pre_hook(watch(i)) for i, block in enumerate(blocks)]
    try:
        latents = engine.generate(spec, request_for("qwen-image")).latents
    finally:
        for handle in handles:
            handle.remove()
    # 2 steps x 2 CFG branches, every block once per call.
    assert [index for index, _ in observed] == list(range(QWEN_BLOCKS)) * 4
    for index, resident in observed:
        assert resident == sorted((index + k) % QWEN_BLOCKS for k in range(window)), (index, resident)
    assert resident_blocks(blocks) == list(range(window)), "between calls: the first blocks, prefetched"
    plain = Engine().generate(spec_for(qwen_six_blocks), request_for("qwen-image")).latents
    assert torch.equal(latents, plain)


def test_layerwise_window_spans_flux_double_and_single_blocks(models_dir):
    engine = Engine()
    spec = spec_for(folder_of(models_dir, "flux"), MemoryConfig(offload="layerwise", blocks_on_device=2))
    pipe = engine.loaded(spec).pipe
    blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
    observed = []
    handles = [block.attn.to_q.register_forward_pre_hook(lambda *_, i=i: observed.append((i, resident_blocks(blocks))))
               for i, block in enumerate(blocks)]
    try:
        engine.generate(spec, request_for("flux"))
    finally:
        for handle in handles:
            handle.remove()
    assert observed[:4] == [(0, [0, 1]), (1, [1, 2]), (2, [2, 3]), (3, [0, 3])]


def test_unloading_restores_the_model_fully(qwen_six_blocks):
    engine = Engine()
    for memory in (MemoryConfig(offload="layerwise", blocks_on_device=2), MemoryConfig(offload="model")):
        spec = spec_for(qwen_six_blocks, memory)
        pipe = engine.loaded(spec).pipe
        engine.generate(spec, request_for("qwen-image"))
        components = ("transformer", "text_encoder", "vae")
        assert not all(has_storage(p) for name in components for p in getattr(pipe, name).parameters())
        engine.unload_all()  # the pipeline cache runs the feature's cleanup
        reference = Engine().loaded(spec_for(qwen_six_blocks)).pipe
        for name in components:
            restored, original = getattr(pipe, name), getattr(reference, name)
            assert all(has_storage(p) for p in restored.parameters()), name
            restored_state, original_state = restored.state_dict(), original.state_dict()
            assert restored_state.keys() == original_state.keys()
            assert all(torch.equal(restored_state[k], original_state[k]) for k in original_state), name
            # (diffusers' own cache_context leaves an empty hook registry on a transformer it ran.)
            assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in restored.modules())
            assert not any("forward" in vars(m) for m in restored.modules()), name
        assert memory_state(pipe).installed is False


def _sizes_of(pipe):
    """(bytes layerwise offload keeps resident, bytes of one block) of the six-block tiny Qwen-Image."""
    from omni_backend.memory.auto_offload import module_bytes

    blocks = [module_bytes(block) for block in pipe.transformer.transformer_blocks]
    assert len(set(blocks)) == 1
    whole = sum(module_bytes(c) for c in pipe.components.values() if isinstance(c, torch.nn.Module))
    return whole - sum(blocks), blocks[0]


def test_a_device_budget_chooses_the_window_and_says_so(qwen_six_blocks):
    from omni_backend.memory.budget import GB

    resident, block = _sizes_of(Engine().loaded(spec_for(qwen_six_blocks)).pipe)
    plain = Engine().generate(spec_for(qwen_six_blocks), request_for("qwen-image")).latents
    budget_gb = (resident + 3.5 * block) / GB  # room for three blocks, not four
    engine = Engine()
    spec = spec_for(qwen_six_blocks, MemoryConfig(offload="layerwise", device_budget_gb=budget_gb))
    result = engine.generate(spec, request_for("qwen-image"))
    windows = memory_state(engine.loaded(spec).pipe).block_windows
    assert [w.window for w in windows] == [3]
    assert resident_blocks(list(engine.loaded(spec).pipe.transformer.transformer_blocks)) == [0, 1, 2]
    assert any(f"3 of {QWEN_BLOCKS} DiT blocks stay resident" in n for n in result.report.notices), \
        result.report.notices
    assert torch.equal(result.latents, plain)
    # A budget that holds every block keeps them all and says that saves nothing.
    everything = spec_for(qwen_six_blocks, MemoryConfig(offload="layerwise", device_budget_gb=budget_gb * 10))
    notices = Engine().generate(everything, request_for("qwen-image", steps=1)).report.notices
    assert any("holds all 6 of the DiT's blocks" in n for n in notices), notices


def test_a_budget_too_small_for_one_block_names_the_smallest_that_works(qwen_six_blocks):
    resident, block = _sizes_of(Engine().loaded(spec_for(qwen_six_blocks)).pipe)
    spec = spec_for(qwen_six_blocks, MemoryConfig(offload="layerwise", device_budget_gb=resident / 1e9))
    with pytest.raises(OmniInputError) as info:
        Engine().generate(spec, request_for("qwen-image", steps=1))
    message = str(info.value)
    assert "device_budget_gb" in message and "fp8 = weight_only" in message
    smallest = float(message.split("at least ")[1].split(",")[0])
    fits = spec_for(qwen_six_blocks, MemoryConfig(offload="layerwise", device_budget_gb=smallest))
    engine = Engine()
    engine.generate(fits, request_for("qwen-image", steps=1))
    assert memory_state(engine.loaded(fits).pipe).block_windows[0].window == 1
    with pytest.raises(OmniInputError) as info:  # with FP8 already on, the fix does not suggest it again
        Engine().generate(spec_for(qwen_six_blocks, MemoryConfig(offload="layerwise", fp8="weight_only",
                                                                 device_budget_gb=resident / 1e9 / 4)),
                          request_for("qwen-image", steps=1))
    assert "fp8 = weight_only" not in str(info.value).split("Fix:")[1]


def test_auto_offload_chooses_from_a_budget_on_any_device(qwen_six_blocks):
    from omni_backend.memory.auto_offload import module_bytes

    pipe = Engine().loaded(spec_for(qwen_six_blocks)).pipe
    sizes = {name: module_bytes(c) for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    total, largest = sum(sizes.values()), max(sizes.values())
    assert largest == sizes["transformer"], sizes
    for budget, mode in ((total * 1.01, "none"), ((largest + total) / 2, "model")):
        result = Engine().generate(spec_for(qwen_six_blocks, MemoryConfig(offload="auto", device_budget_gb=budget / 1e9)),
                                   request_for("qwen-image", steps=1))
        assert result.report.sections["memory"]["offload"] == mode, (budget, result.report.notices)
        assert any(f"auto chose {mode}" in n and "device_budget_gb" in n for n in result.report.notices)
    # Below the DiT's size auto chooses layerwise, and the budget then sizes its window: this tiny model's
    # VAE is too large to leave room for a block beside it, which the budget's refusal says.
    with pytest.raises(OmniInputError, match="device_budget_gb .* raise device_budget_gb to at least"):
        Engine().generate(spec_for(qwen_six_blocks, MemoryConfig(offload="auto", device_budget_gb=largest * 0.99 / 1e9)),
                          request_for("qwen-image", steps=1))


def test_layerwise_offload_under_a_cache_that_skips_blocks(qwen_six_blocks):
    """diffusers' FirstBlockCache skips blocks 1..5 on cached steps: output as without offload, window kept."""
    from diffusers.hooks import FirstBlockCacheConfig

    request = request_for("qwen-image", steps=4, guidance=1.0)
    outputs = {}
    for window in (None, 2):
        engine = Engine()
        memory = MemoryConfig(offload="layerwise", blocks_on_device=window) if window else None
        spec = spec_for(qwen_six_blocks, memory)
        pipe = engine.loaded(spec).pipe
        blocks = list(pipe.transformer.transformer_blocks)
        counts = [0] * QWEN_BLOCKS
        worst = []

        def watch(index):
            def hook(*_):
                counts[index] += 1
                worst.append(len(resident_blocks(blocks)))
            return hook

        handles = [block.img_mod.register_forward_pre_hook(watch(i)) for i, block in enumerate(blocks)]
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))  # large: every later step is cached
        try:
            outputs[window] = engine.generate(spec, request).latents
        finally:
            pipe.transformer.disable_cache()
            for handle in handles:
                handle.remove()
        assert counts[0] == 4 and counts[1] < 4, f"the cache skipped nothing: {counts}"
        if window:
            assert max(worst) == window
    assert torch.equal(outputs[None], outputs[2])


# ---- FP8 ------------------------------------------------------------------------------------------------
# (attention/MLP linears quantized, modulation linears quantized weight-only, linears that must stay
# nn.Linear in full precision) per family.
FP8_EXPECTATIONS = {
    "qwen-image": (["transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.add_v_proj",
                    "transformer_blocks.0.attn.to_add_out", "transformer_blocks.0.img_mlp.net.2",
                    "transformer_blocks.0.txt_mlp.net.0.proj"],
                   ["transformer_blocks.0.img_mod.1", "transformer_blocks.1.txt_mod.1"],
                   ["img_in", "txt_in", "proj_out", "norm_out.linear", "time_text_embed.timestep_embedder.linear_1"]),
    "z-image": (["layers.0.attention.to_q", "layers.1.feed_forward.w2"],
                ["layers.0.adaLN_modulation.0", "layers.1.adaLN_modulation.0"],
                ["t_embedder.mlp.0", "cap_embedder.1", "all_x_embedder.2-1", "all_final_layer.2-1.linear",
                 "all_final_layer.2-1.adaLN_modulation.1", "noise_refiner.0.attention.to_q"]),
    "flux": (["transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff_context.net.2",
              "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.1.proj_out",
              "single_transformer_blocks.0.attn.to_k"],
             ["transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear",
              "single_transformer_blocks.0.norm.linear"],
             ["x_embedder", "context_embedder", "proj_out", "norm_out.linear",
              "time_text_embed.guidance_embedder.linear_1"]),
    "flux2-klein": (["transformer_blocks.0.ff.linear_in", "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
                     "single_transformer_blocks.1.attn.to_out"],
                    ["double_stream_modulation_img.linear", "double_stream_modulation_txt.linear",
                     "single_stream_modulation.linear"],
                    ["x_embedder", "context_embedder", "proj_out", "norm_out.linear",
                     "time_guidance_embed.timestep_embedder.linear_1"]),
    "sd3": (["transformer_blocks.0.attn2.to_q", "transformer_blocks.1.ff.net.0.proj"],
            ["transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear"],
            ["context_embedder", "proj_out", "norm_out.linear", "time_text_embed.text_embedder.linear_1"]),
    "wan2.2": (["blocks.0.attn1.to_q", "blocks.1.attn2.to_out.0", "blocks.0.ffn.net.0.proj"],
               ["condition_embedder.time_proj"],
               ["condition_embedder.time_embedder.linear_1", "condition_embedder.text_embedder.linear_1",
                "proj_out"]),
}
# Stable Audio's blocks have no AdaLN modulation (the timestep is prepended to the sequence).
FP8_EXPECTATIONS["stable-audio"] = (["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn2.to_v",
                                     "transformer_blocks.0.attn2.to_out.0", "transformer_blocks.1.ff.net.2"], [],
                                    ["proj_in", "proj_out", "timestep_proj.0", "global_proj.2",
                                     "cross_attention_proj.0"])
# The edit families run Qwen-Image's transformer.
FP8_EXPECTATIONS["qwen-image-edit"] = FP8_EXPECTATIONS["qwen-image-edit-2509"] = FP8_EXPECTATIONS["qwen-image"]
FP8_EXPECTATIONS["qwen-image-edit-2511"] = FP8_EXPECTATIONS["qwen-image"]
FP8_EXPECTATIONS["qwen-image-layered"] = FP8_EXPECTATIONS["qwen-image"]  # its extra t-embedding is no Linear
FP8_EXPECTATIONS["wan2.2-i2v"] = FP8_EXPECTATIONS["wan2.2-ti2v"] = FP8_EXPECTATIONS["wan2.2"]  # same transformer
# LongCat and Ovis have FLUX.1's block layout; their timestep embedders sit elsewhere.
_FLUX_LIKE_QUANTIZED, _FLUX_LIKE_MODULATION, _FLUX_LIKE_KEPT = (FP8_EXPECTATIONS["flux"][0], FP8_EXPECTATIONS["flux"][1],
                                                                FP8_EXPECTATIONS["flux"][2][:-1])
FP8_EXPECTATIONS["longcat-image"] = FP8_EXPECTATIONS["longcat-image-edit"] = (
    _FLUX_LIKE_QUANTIZED, _FLUX_LIKE_MODULATION, _FLUX_LIKE_KEPT + ["time_embed.timestep_embedder.linear_1"])
FP8_EXPECTATIONS["ovis-image"] = (_FLUX_LIKE_QUANTIZED, _FLUX_LIKE_MODULATION,
                                  _FLUX_LIKE_KEPT + ["timestep_embedder.linear_1"])

FP8_EXPECTATIONS["glm-image"] = (["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2"],
                                 ["transformer_blocks.0.norm1.linear", "transformer_blocks.1.norm1.linear"],
                                 ["image_projector.proj", "glyph_projector.net.0.proj", "prior_projector.net.2",
                                  "proj_out", "norm_out.linear", "time_condition_embed.timestep_embedder.linear_1"])


@pytest.mark.parametrize("family_key", list(FAMILIES))
def test_fp8_quantizes_attention_mlp_and_modulation_and_halves_their_bytes(models_dir, family_key):
    engine = Engine()
    folder = folder_of(models_dir, family_key)
    pipe = engine.loaded(spec_for(folder, MemoryConfig(fp8="weight_only"))).pipe
    quantized, modulation, kept = FP8_EXPECTATIONS[family_key]
    for _component, transformer in FAMILIES[family_key].transformers(pipe):
        modules = dict(transformer.named_modules())
        for name in quantized + modulation:
            assert isinstance(modules[name], FP8Linear) and modules[name].weight.dtype == torch.float8_e4m3fn, name
        for name in kept:
            assert type(modules[name]) is torch.nn.Linear and modules[name].weight.dtype == torch.float32, name
        for name, module in modules.items():
            if any(marker in name.lower() for marker in ("emb", "norm_out")) and isinstance(module, torch.nn.Linear) \
                    and name not in modulation:  # Wan's time_proj sits in its condition_embedder
                assert type(module) is torch.nn.Linear, f"{name} must stay in full precision"
        fp8_layers = [m for m in modules.values() if isinstance(m, FP8Linear)]
        fp8_bytes = sum(layer.weight_nbytes() for layer in fp8_layers)
        bf16_bytes = sum(layer.weight.numel() * 2 for layer in fp8_layers)
        assert fp8_layers and fp8_bytes <= 0.55 * bf16_bytes, fp8_bytes / bf16_bytes
        for param in transformer.parameters():  # scales and everything not quantized stay float32
            assert param.dtype in (torch.float32, torch.float8_e4m3fn)


@pytest.mark.parametrize("family_key", ["qwen-image", "flux"])
def test_fp8_psnr_against_the_unquantized_model(models_dir, family_key, record_property):
    engine = Engine()
    folder = folder_of(models_dir, family_key)
    request = request_for(family_key, steps=3, height=64)
    plain_spec, fp8_spec = spec_for(folder), spec_for(folder, MemoryConfig(fp8="weight_only"))
    reference = engine.decode(plain_spec, engine.generate(plain_spec, request).latents)
    image = engine.decode(fp8_spec, engine.generate(fp8_spec, request).latents)
    value = psnr(image, reference)
    record_property("fp8_weight_only_psnr_db", value)
    print(f"{family_key}: FP8 weight-only PSNR vs unquantized {value:.1f} dB (floor {PSNR_FLOOR_DB} dB)")
    assert 0 < (image - reference).abs().max() and value >= PSNR_FLOOR_DB


def test_w8a8_on_the_cpu_runs_weight_only_with_a_notice(models_dir):
    engine = Engine(max_loaded=2)
    folder = folder_of(models_dir, "z-image")
    request = request_for("z-image")
    w8a8 = engine.generate(spec_for(folder, MemoryConfig(fp8="w8a8")), request)
    weight_only = engine.generate(spec_for(folder, MemoryConfig(fp8="weight_only")), request)
    assert any("w8a8" in n and "weight-only" in n and "CPU" in n for n in w8a8.report.notices), w8a8.report.notices
    assert w8a8.report.sections["memory"]["fp8"] == "weight_only"
    assert torch.equal(w8a8.latents, weight_only.latents)


def test_fp8_text_encoder_quantizes_its_layers_only(models_dir):
    engine = Engine()
    pipe = engine.loaded(spec_for(folder_of(models_dir, "flux"),
                                  MemoryConfig(fp8="weight_only", fp8_text_encoder=True))).pipe
    clip = dict(pipe.text_encoder.named_modules())
    t5 = dict(pipe.text_encoder_2.named_modules())
    assert isinstance(clip["encoder.layers.0.self_attn.q_proj"], FP8Linear)
    assert isinstance(clip["encoder.layers.1.mlp.fc2"], FP8Linear)
    assert isinstance(t5["encoder.block.0.layer.0.SelfAttention.q"], FP8Linear)
    assert type(t5["encoder.block.0.layer.1.DenseReluDense.wo"]) is torch.nn.Linear  # T5 keeps `wo` in fp32
    assert not any(isinstance(m, FP8Linear) for n, m in clip.items() if "embeddings" in n)
    result = engine.generate(spec_for(folder_of(models_dir, "flux"),
                                      MemoryConfig(fp8="weight_only", fp8_text_encoder=True)), request_for("flux"))
    assert "text_encoder_2 linears" in result.report.sections["memory"]["text"]


def test_w8a8_numerics_against_a_reference_on_small_shapes():
    """torch._scaled_mm runs on the CPU (slowly): small shapes check the w8a8 path's math."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(2, 5, 64)
    x[0, 1] *= 1e5  # one outlier token: with one scale for the whole tensor the others underflow fp8
    exact = linear(x)

    out = w8a8_linear(x, *quantize_per_channel(linear.weight), linear.bias, torch.float32)
    # Reference: the same quantization, dequantized and multiplied in float64.
    x_fp8, x_scale = quantize_per_token(x.reshape(-1, 64))
    w_fp8, w_scale = quantize_per_channel(linear.weight)
    reference = (x_fp8.double() * x_scale.double()) @ (w_fp8.double() * w_scale.double()).T + linear.bias.double()
    # float32 accumulation differs from float64 by ~1e-7 relative; an FP8 rounding slip would be ~1e-2.
    mismatch = (out.reshape(-1, 48).double() - reference).norm(dim=1) / reference.norm(dim=1)
    assert mismatch.max() < 1e-5, mismatch

    relative = ((out - exact).norm(dim=-1) / exact.norm(dim=-1)).flatten()
    assert relative.max() < 0.08, relative
    # Per-tensor activation scaling (what per-token avoids) loses the small tokens next to the outlier.
    tensor_scale = x.abs().max() / 448.0
    x_tensorwise = (x / tensor_scale).to(torch.float8_e4m3fn).float() * tensor_scale
    tensorwise = torch.nn.functional.linear(x_tensorwise, w_fp8.float() * w_scale, linear.bias)
    tensorwise_error = ((tensorwise - exact).norm(dim=-1) / exact.norm(dim=-1)).flatten()
    others = [i for i in range(10) if i != 1]
    assert relative[others].max() * 3 < tensorwise_error[others].max()

    # FP8Linear's w8a8 path is this function; forced on here (the runtime enables it on sm89+ GPUs only).
    layer = FP8Linear.from_linear(linear, use_scaled_mm=True)
    assert layer.use_scaled_mm
    assert torch.equal(layer(x), out)
    assert not FP8Linear.from_linear(torch.nn.Linear(60, 48), use_scaled_mm=True).use_scaled_mm  # 60 % 16 != 0


def test_weight_only_layer_matches_dequantized_math():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 24).to(torch.bfloat16)
    layer = FP8Linear.from_linear(linear)
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    weight, scale = quantize_per_channel(linear.weight)
    dequantized = (weight.float() * scale).to(torch.bfloat16)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, dequantized, linear.bias))
    assert layer.compute_dtype == torch.bfloat16 and layer.weight_scale.dtype == torch.float32
    relative = (layer(x) - linear(x)).float().norm() / linear(x).float().norm()
    assert 0 < relative < 0.05


# ---- LoRA (peft) on FP8 and offloaded layers ---------------------------------------------------------------
def _inject_lora(transformer, seed: int):
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "img_mlp.net.2"])
    return inject_adapter_in_model(config, transformer)


def test_lora_added_after_fp8_and_layerwise_offload_stays_high_precision(qwen_six_blocks):
    from peft.tuners.lora import LoraLayer

    request = request_for("qwen-image", guidance=1.0)
    results = {}
    for memory in (MemoryConfig(fp8="weight_only"), MemoryConfig(fp8="weight_only", offload="layerwise",
                                                                  blocks_on_device=1)):
        engine = Engine()
        spec = spec_for(qwen_six_blocks, memory)
        pipe = engine.loaded(spec).pipe
        base = engine.generate(spec, request).latents
        _inject_lora(pipe.transformer, seed=5)  # while the blocks are released (offload) or fp8 (both)
        wrapped = [m for m in pipe.transformer.modules() if isinstance(m, LoraLayer)]
        assert wrapped and all(isinstance(m.get_base_layer(), FP8Linear) for m in wrapped)
        for layer in wrapped:
            assert {p.dtype for p in layer.lora_A.parameters()} | {p.dtype for p in layer.lora_B.parameters()} \
                == {torch.float32}
        results[memory.offload] = engine.generate(spec, request).latents
        assert not torch.equal(results[memory.offload], base), "the adapter must change the output"
    assert torch.equal(results["none"], results["layerwise"])


def test_load_lora_node_with_offload_fp8_in_either_order(headless, nodes):
    """The LoRA feature on an FP8 + layerwise model: same spec in either node order, offload still exact."""
    from peft.tuners.lora import LoraLayer

    from omni_diffusion_nodes.headless.recipes import LORA_FILES

    (spec,) = nodes["OmniLoadModel"]().load("qwen-image", "fp32", "cpu")
    memory_node, lora_node = nodes["OmniOffloadFP8"](), nodes["OmniLoadLoRA"]()
    memory_args = ("layerwise", 1, "weight_only", False)
    (first,) = lora_node.apply(memory_node.apply(spec, *memory_args)[0], LORA_FILES[0], 0.8, "auto")
    (second,) = memory_node.apply(lora_node.apply(spec, LORA_FILES[0], 0.8, "auto")[0], *memory_args)
    assert first == second
    engine = Engine()
    request = request_for("qwen-image")
    offloaded = engine.generate(first, request).latents
    pipe = engine.loaded(first).pipe
    wrapped = [m for m in pipe.transformer.modules() if isinstance(m, LoraLayer)]
    assert wrapped and any(isinstance(m.get_base_layer(), FP8Linear) for m in wrapped)
    assert all(p.dtype == torch.float32 for m in wrapped for p in [*m.lora_A.parameters(), *m.lora_B.parameters()])
    resident = engine.generate(first.replace(memory=MemoryConfig(fp8="weight_only")), request).latents
    without_lora = engine.generate(first.replace(loras=()), request).latents
    assert torch.equal(offloaded, resident)
    assert not torch.equal(offloaded, without_lora)


def test_layers_wrapped_by_lora_before_fp8_quantize_their_base_layer_only(models_dir):
    from diffusers import QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel.from_pretrained(folder_of(models_dir, "qwen-image") / "transformer")
    _inject_lora(transformer, seed=2)
    names = quantize_linears(dit_targets(FAMILIES["qwen-image"], transformer), torch.device("cpu"),
                             torch.device("cpu"))
    assert "transformer_blocks.0.attn.to_q.base_layer" in names
    assert not any("lora_" in name for name in names)
    to_q = transformer.transformer_blocks[0].attn.to_q
    assert isinstance(to_q.base_layer, FP8Linear) and to_q.lora_A["default"].weight.dtype == torch.float32


# ---- choices, rules and bad input --------------------------------------------------------------------------
def test_auto_offload_choice():
    sizes = {"transformer": 40 * GIB, "text_encoder": 16 * GIB, "vae": 1 * GIB}
    assert choose_offload(80 * GIB, 80 * GIB, sizes).mode == "none"
    assert choose_offload(48 * GIB, 48 * GIB, sizes).mode == "model"
    assert choose_offload(24 * GIB, 24 * GIB, sizes).mode == "layerwise"
    assert choose_offload(24 * GIB, 24 * GIB, sizes, world_size=2).mode == "model"


def test_auto_offload_on_the_cpu_is_no_offload_with_a_notice(models_dir):
    result = Engine().generate(spec_for(folder_of(models_dir, "z-image"), MemoryConfig(offload="auto")),
                               request_for("z-image"))
    assert result.report.sections["memory"]["offload"] == "none"
    assert any("auto chose none" in notice for notice in result.report.notices)


def test_layerwise_offload_is_refused_with_a_multi_device_layout(models_dir):
    from omni_backend.parallel.config import ParallelConfig

    spec = spec_for(folder_of(models_dir, "qwen-image")).replace(parallel=ParallelConfig(ulysses_degree=2))
    with pytest.raises(OmniIncompatibleError) as info:
        spec.replace(memory=MemoryConfig(offload="layerwise"))
    message = str(info.value)
    assert "offload = layerwise" in message and "Parallel Config (2 devices)" in message and "Fix:" in message
    assert spec.replace(memory=MemoryConfig(offload="model", fp8="w8a8")).memory.offload == "model"


def test_fp8_is_refused_with_tensor_parallel(models_dir):
    """Tensor parallelism shards full-precision linears; FP8 layers would lose their scales (it crashed)."""
    from omni_backend.parallel.config import ParallelConfig

    spec = spec_for(folder_of(models_dir, "qwen-image")).replace(parallel=ParallelConfig(tensor_parallel=2))
    with pytest.raises(OmniIncompatibleError) as info:
        spec.replace(memory=MemoryConfig(fp8="weight_only"))
    assert "fp8 = weight_only" in str(info.value) and "tensor_parallel = 2" in str(info.value)
    assert spec.replace(memory=MemoryConfig(offload="model")).memory.fp8 == "off"


@pytest.mark.slow
def test_fp8_and_model_offload_in_ulysses_worker_processes(models_dir):
    """Each rank applies the memory feature when it loads; the result matches one process."""
    from omni_backend.parallel.config import ParallelConfig

    engine = Engine()
    memory = MemoryConfig(offload="model", fp8="weight_only")
    spec = spec_for(folder_of(models_dir, "qwen-image"), memory)
    request = request_for("qwen-image")
    single = engine.generate(spec, request).latents
    try:
        result = engine.generate(spec.replace(parallel=ParallelConfig(ulysses_degree=2)), request)
    finally:
        engine.unload_all()
    assert result.report.sections["memory"]["offload"] == "model"
    assert (result.latents - single).abs().max() < 1e-4


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(offload="disk"), ["offload", "'disk'", "none, auto, model, layerwise"]),
    (dict(fp8="int8"), ["fp8", "'int8'", "weight_only"]),
    (dict(offload="layerwise", blocks_on_device=0), ["blocks_on_device", "0", "between 1 and"]),
    (dict(fp8_text_encoder=True), ["fp8_text_encoder", "fp8", "off"]),
    (dict(offload="layerwise", device_budget_gb=-1.0), ["device_budget_gb", "-1.0", "from 0 to"]),
    (dict(offload="model", device_budget_gb=8.0), ["device_budget_gb", "8.0", "offload = model", "layerwise or auto"]),
])
def test_bad_memory_settings_are_named_with_a_fix(kwargs, fragments):
    with pytest.raises(OmniInputError) as info:
        MemoryConfig(**kwargs)
    for fragment in (*fragments, "Fix:"):
        assert fragment in str(info.value)


def test_node_builds_specs_and_reloads_only_when_weights_change(headless, nodes):
    (spec,) = nodes["OmniLoadModel"]().load("qwen-image", "fp32", "cpu")
    node = nodes["OmniOffloadFP8"]()
    (plain,) = node.apply(spec, "none", 2, "off", False)
    assert plain.memory is None and plain.weights_key() == spec.weights_key()
    (layerwise,) = node.apply(spec, "layerwise", 3, "weight_only", True)
    assert layerwise.memory == MemoryConfig("layerwise", 3, "weight_only", True) and spec.memory is None
    (model_a,) = node.apply(spec, "model", 2, "off", False)
    (model_b,) = node.apply(spec, "model", 5, "off", False)
    (budgeted,) = node.apply(spec, "layerwise", 3, "weight_only", True, 6.5)
    assert budgeted.memory.device_budget_gb == 6.5 and budgeted.weights_key() != layerwise.weights_key()
    assert node.apply(spec, "layerwise", 2, "off", False, 6.5)[0].weights_key() == budgeted.replace(
        memory=MemoryConfig("layerwise", 7, "off", False, 6.5)).weights_key(), "a budget decides, not the count"
    assert model_a.weights_key() == model_b.weights_key(), "blocks_on_device means nothing to model offload"
    assert layerwise.weights_key() != model_a.weights_key() != spec.weights_key()
    with pytest.raises(OmniInputError, match="offload"):
        node.apply(spec, "disk", 2, "off", False)


def test_a_plain_load_after_an_offloaded_one_has_no_trace_of_it(models_dir):
    engine = Engine(max_loaded=2)
    folder = folder_of(models_dir, "z-image")
    request = request_for("z-image")
    engine.generate(spec_for(folder, MemoryConfig(offload="layerwise", blocks_on_device=1, fp8="weight_only")), request)
    plain_spec = spec_for(folder)
    latents = engine.generate(plain_spec, request).latents
    pipe = engine.loaded(plain_spec).pipe
    assert memory_state(pipe) is None
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            assert not any(isinstance(m, FP8Linear) or hasattr(m, "_diffusers_hook") for m in module.modules())
    assert torch.equal(latents, Engine().generate(plain_spec, request).latents)
