"""ComfyUI's single files for the families with other text encoders than Qwen-Image's (FLUX.1:
CLIP-L + T5-XXL; Z-Image: Qwen3; SD3.5: CLIP-L + CLIP-G + T5-XXL; Stable-Audio-Open: T5-base beside its
bundled checkpoint): each family's tiny model written as
those files gives its diffusers-folder twin's output, and files in the wrong inputs are refused
before any weight loads, naming the fix."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from comfyui_host import real_comfyui
from omni_backend.engine import Engine
from omni_backend.errors import OmniInputError
from omni_backend.families import FAMILIES
from omni_backend.request import GenerationRequest
from omni_backend.families.flux import single_file as flux
from omni_backend.families.flux2_klein import single_file as flux2_klein
from omni_backend.families.z_image import single_file as z_image
from omni_backend.single_file.comfy_layout import write_comfy_files
from omni_backend.single_file.model_files import ModelFiles, inspect_model_files
from omni_backend.spec import ModelSpec

FAMILY_KEYS = ["flux", "z-image", "sd3", "flux2-klein", "stable-audio", "longcat-image", "ovis-image"]
REQUEST = GenerationRequest(prompt="a red circle", negative_prompt="blurry", steps=2, guidance=4.0, width=64,
                            height=64)


def _files(written: dict) -> ModelFiles:
    return ModelFiles(**{name: str(path) for name, path in written.items()})


@pytest.fixture(scope="module")
def engine():
    engine = Engine()
    yield engine
    engine.unload_all()


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Per family, built once: the diffusers folder and its files in fp32 and fp8_scaled."""
    built = {}

    def get(family_key: str):
        if family_key not in built:
            root = tmp_path_factory.mktemp(family_key)
            folder = FAMILIES[family_key].make_tiny(root / "folder")
            built[family_key] = folder, {fmt: _files(write_comfy_files(family_key, root / fmt, fmt))
                                         for fmt in ("fp32", "fp8_scaled")}
        return built[family_key]
    return get


@pytest.fixture(scope="module")
def references(twins, engine):
    """Per family, computed once: the diffusers folder's output in fp32."""
    computed = {}

    def get(family_key: str):
        if family_key not in computed:
            folder, _files = twins(family_key)
            computed[family_key] = engine.generate(ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu"),
                                                   REQUEST).latents
            engine.unload_all()
        return computed[family_key]
    return get


@pytest.mark.parametrize("family_key", FAMILY_KEYS)
def test_files_give_the_folder_twins_output(twins, references, engine, family_key):
    _folder, files = twins(family_key)
    reference = references(family_key)
    spec = ModelSpec.from_files(files["fp32"], dtype="fp32", device="cpu")
    assert spec.family_key == family_key
    assert torch.allclose(engine.generate(spec, REQUEST).latents, reference, atol=2e-5)
    engine.unload_all()  # one model at a time in memory
    # fp8_scaled: the DiT and the encoders ComfyUI ships scaled hold FP8 values and their scales.
    latents = engine.generate(ModelSpec.from_files(files["fp8_scaled"], dtype="fp32", device="cpu"), REQUEST).latents
    error = float((latents - reference).abs().max() / reference.abs().max())
    assert 0 < error < 0.06, f"relative error {error}: FP8 rounding only, never the scale's orders of magnitude"
    engine.unload_all()


def test_flux_rules_equal_diffusers_converter_at_flux1_widths():
    """Our FLUX.1 rule table (written because diffusers' converter hard-codes the 3072 width) moves every
    row where diffusers' converter moves it, at the released model's widths. Each tensor is one column
    of row numbers (the maps only split, stack and swap rows), so this costs kilobytes."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    config = {**flux.TRANSFORMER, "num_layers": 1, "num_single_layers": 1}
    inner = config["attention_head_dim"] * config["num_attention_heads"]
    # The original layout's row counts at FLUX.1-dev's widths (3072 wide, 128-wide heads, 4x MLP, 64 in).
    rows = {"time_in.in_layer": inner, "time_in.out_layer": inner, "vector_in.in_layer": inner,
            "vector_in.out_layer": inner, "guidance_in.in_layer": inner, "guidance_in.out_layer": inner,
            "txt_in": inner, "img_in": inner, "final_layer.linear": 64, "final_layer.adaLN_modulation.1": 2 * inner,
            "double_blocks.0.img_mod.lin": 6 * inner, "double_blocks.0.txt_mod.lin": 6 * inner,
            "double_blocks.0.img_attn.qkv": 3 * inner, "double_blocks.0.txt_attn.qkv": 3 * inner,
            "double_blocks.0.img_mlp.0": 4 * inner, "double_blocks.0.img_mlp.2": inner,
            "double_blocks.0.txt_mlp.0": 4 * inner, "double_blocks.0.txt_mlp.2": inner,
            "double_blocks.0.img_attn.proj": inner, "double_blocks.0.txt_attn.proj": inner,
            "single_blocks.0.modulation.lin": 3 * inner, "single_blocks.0.linear1": 7 * inner,
            "single_blocks.0.linear2": inner}
    state, start = {}, 0
    for name, count in rows.items():
        for suffix in ("weight", "bias"):
            state[f"{name}.{suffix}"] = torch.arange(start, start + count).reshape(count, 1)
            start += count
    for name in ("double_blocks.0.img_attn.norm", "double_blocks.0.txt_attn.norm", "single_blocks.0.norm"):
        for norm in ("query_norm", "key_norm"):
            state[f"{name}.{norm}.scale"] = torch.arange(start, start + 128)
            start += 128
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    ours = flux.transformer_keys(dict(state), config)
    # Four fused qkv tensors (weights, biases) add 2 keys each, the two fused linear1 tensors 3 each.
    assert set(ours) == set(theirs) and len(ours) == len(state) + 4 * 2 + 2 * 3
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    back = flux.transformer_file_keys(ours, config)
    assert set(back) == set(state) and all(torch.equal(back[key], state[key]) for key in state)


def test_flux_encoders_in_the_wrong_inputs_are_refused_with_the_fix(twins):
    _folder, files = twins("flux")
    good = files["fp32"]
    swapped = ModelFiles(good.diffusion_model, good.text_encoder_2, good.vae, text_encoder_2=good.text_encoder)
    with pytest.raises(OmniInputError, match="text_encoder = 't5xxl_fp16.safetensors'.*holds T5.*swap text_encoder "
                                             "and text_encoder_2"):
        inspect_model_files(swapped)
    missing = ModelFiles(good.diffusion_model, good.text_encoder, good.vae)
    with pytest.raises(OmniInputError, match="text_encoder_2 = 'none'.*needs T5.*t5xxl_fp16.safetensors"):
        inspect_model_files(missing)


def test_schnell_is_told_from_dev_by_its_guidance_embedder(twins, tmp_path):
    """FLUX.1-schnell's file has no guidance embedder: no guidance input, and schnell's unshifted schedule."""
    _folder, files = twins("flux")
    dev = inspect_model_files(files["fp32"])
    assert dev.transformer_config["guidance_embeds"] is True
    state = safetensors.torch.load_file(files["fp32"].diffusion_model)
    with safetensors.safe_open(files["fp32"].diffusion_model, "pt") as handle:
        config = {key: value for key, value in json.loads(handle.metadata()["config"]).items()
                  if key != "guidance_embeds"}  # the tiny twin's carried config, less what shapes tell
    schnell = tmp_path / "flux1-schnell.safetensors"
    safetensors.torch.save_file({key: value for key, value in state.items() if ".guidance_in." not in key}, schnell,
                                metadata={"config": json.dumps(config)})
    info = inspect_model_files(ModelFiles(str(schnell), files["fp32"].text_encoder, files["fp32"].vae,
                                          text_encoder_2=files["fp32"].text_encoder_2))
    assert info.transformer_config["guidance_embeds"] is False
    assert flux.scheduler_config(info.transformer_config)["use_dynamic_shifting"] is False


def test_an_extra_text_encoder_for_a_one_encoder_family_is_refused(twins, tmp_path):
    _folder, files = twins("flux")
    qwen = write_comfy_files("qwen-image", tmp_path, "fp32")
    extra = ModelFiles(str(qwen["diffusion_model"]), str(qwen["text_encoder"]), str(qwen["vae"]),
                       text_encoder_2=files["fp32"].text_encoder_2)
    with pytest.raises(OmniInputError, match="text_encoder_2 = .*qwen-image has 1 text encoder.*set text_encoder_2 "
                                             "to none"):
        inspect_model_files(extra)
    assert Path(qwen["text_encoder"]).is_file()


def test_qwen3_prompts_are_comfyuis_not_the_qwen25_folders_template():
    """ComfyUI's qwen25_tokenizer folder carries Qwen2.5's chat template, which adds a default system
    prompt; Z-Image's and FLUX.2-klein's Qwen3 read what ComfyUI feeds them (Qwen3's own rendering:
    the bare user turn, and for klein, thinking off, an empty think block)."""
    from omni_backend.tiny.tokenizers import qwen_tokenizer

    for profile, thinking, ending in ((z_image.PROFILE, True, ""), (flux2_klein.PROFILE, False, "<think>\n\n</think>\n\n")):
        tokenizer = qwen_tokenizer()
        tokenizer.chat_template = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" +
                                   tokenizer.chat_template)
        tokenizer = profile.tokenizer_setup("text_encoder", tokenizer)
        text = tokenizer.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=thinking)
        assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n" + ending, profile.family_key


def test_sd3_clip_g_in_the_clip_l_input_is_refused_before_weights_load(twins, tmp_path):
    """The released CLIPs differ in width (768 / 1280); a header is enough to tell, so a swapped pair is
    refused before a weight is read (this file holds one small tensor of CLIP-G's width)."""
    _folder, files = twins("sd3")
    clip_g = tmp_path / "clip_g.safetensors"
    safetensors.torch.save_file({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 1280)}, clip_g)
    good = files["fp32"]
    with pytest.raises(OmniInputError, match="text_encoder = 'clip_g.safetensors'.*holds CLIP-G.*swap text_encoder "
                                             "and text_encoder_2"):
        inspect_model_files(ModelFiles(good.diffusion_model, str(clip_g), good.vae, text_encoder_2=good.text_encoder_2,
                                       text_encoder_3=good.text_encoder_3))
    # Two CLIPs whose projections do not add up to the DiT's pooled input (here: CLIP-L twice at 32 + 32
    # would fit, so narrow one): refused naming both widths.
    state = safetensors.torch.load_file(good.text_encoder_2)
    narrow = {key: value[:16] if key == "text_projection.weight" else value for key, value in state.items()}
    other = tmp_path / "clip_g_other.safetensors"
    with safetensors.safe_open(good.text_encoder_2, "pt") as handle:
        config = json.loads(handle.metadata()["config"])
    safetensors.torch.save_file(narrow, other, metadata={"config": json.dumps({**config, "projection_dim": 16})})
    (tmp_path / "sd1_tokenizer").symlink_to(Path(good.text_encoder).parent / "sd1_tokenizer")
    with pytest.raises(OmniInputError, match="text_encoder_2 = .*text_encoder its width adds up to 32 \\+ 16 = 48.*"
                                             "width 64"):
        inspect_model_files(ModelFiles(good.diffusion_model, good.text_encoder, good.vae, text_encoder_2=str(other),
                                       text_encoder_3=good.text_encoder_3))


def test_sd3_checkpoint_bundling_dit_and_vae_reads_each_part(twins, references, engine, tmp_path):
    """Stability's sd3.5_medium.safetensors bundles the DiT (model.diffusion_model.) and the VAE
    (first_stage_model.): either input reads its own part, as the separate files hold it."""
    from omni_backend.single_file.weights_file import inspect_weights_file, read_tensors

    _folder, files = twins("sd3")
    good = files["fp32"]
    dit = safetensors.torch.load_file(good.diffusion_model)  # already under model.diffusion_model.
    vae = {f"first_stage_model.{key}": value for key, value in safetensors.torch.load_file(good.vae).items()}
    with safetensors.safe_open(good.diffusion_model, "pt") as handle:
        metadata = handle.metadata()
    bundle = tmp_path / "sd3.5_medium.safetensors"
    safetensors.torch.save_file({**dit, **vae}, bundle, metadata=metadata)

    read = {name: read_tensors(inspect_weights_file(path, "vae"), torch.float32) for name, path in
            (("bundle", bundle), ("file", good.vae))}
    assert set(read["bundle"]) == set(read["file"]) and all(torch.equal(read["bundle"][k], read["file"][k])
                                                            for k in read["file"])
    # The whole model with the DiT from the bundle. (The VAE part is compared tensor by tensor above: a
    # bundle's metadata config describes its DiT, so the tiny VAE's group count cannot ride along.)
    bundled = ModelFiles(str(bundle), good.text_encoder, good.vae, text_encoder_2=good.text_encoder_2,
                         text_encoder_3=good.text_encoder_3)
    spec = ModelSpec.from_files(bundled, dtype="fp32", device="cpu")
    assert torch.allclose(engine.generate(spec, REQUEST).latents, references("sd3"), atol=2e-5)
    engine.unload_all()


def test_klein_text_encoder_of_another_width_is_refused(twins, tmp_path):
    """FLUX.2-klein stacks three of Qwen3's hidden layers as its text input: a Qwen3 of another size
    (the 8B's encoder with the 4B's DiT) is refused before weights load, naming both widths."""
    _folder, files = twins("flux2-klein")
    good = files["fp32"]
    state = safetensors.torch.load_file(good.text_encoder)
    wider = {key: torch.zeros(*[64 if size == 32 else size for size in value.shape]) for key, value in state.items()}
    with safetensors.safe_open(good.text_encoder, "pt") as handle:
        config = json.loads(handle.metadata()["config"])
    other = tmp_path / "qwen_3_8b.safetensors"
    safetensors.torch.save_file(wider, other, metadata={"config": json.dumps({**config, "hidden_size": 64})})
    (tmp_path / "qwen25_tokenizer").symlink_to(Path(good.text_encoder).parent / "qwen25_tokenizer")
    with pytest.raises(OmniInputError, match=r"text_encoder = 'qwen_3_8b.safetensors'.*hidden size is 64 \(3 layers "
                                             r"stacked: 192\).*width 96"):
        inspect_model_files(ModelFiles(good.diffusion_model, str(other), good.vae))


def test_clip_prompts_are_cut_to_clips_positions_whatever_the_tokenizer_folder_says(twins, tmp_path):
    """ComfyUI's comfy/sd1_tokenizer declares model_max_length 8192; the pipelines pad CLIP prompts to
    it, past CLIP's 77 positions. The loader caps it at the encoder's positions."""
    import shutil

    from omni_backend.single_file.model_files import load_pipeline_from_files

    _folder, files = twins("flux")
    good = files["fp32"]
    shutil.copy(good.text_encoder, tmp_path / "clip_l.safetensors")
    shutil.copytree(Path(good.text_encoder).parent / "sd1_tokenizer", tmp_path / "sd1_tokenizer")
    config_path = tmp_path / "sd1_tokenizer" / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "model_max_length": 8192}))
    moved = ModelFiles(good.diffusion_model, str(tmp_path / "clip_l.safetensors"), good.vae,
                       text_encoder_2=good.text_encoder_2)
    pipe = load_pipeline_from_files(moved, inspect_model_files(moved), torch.float32)
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings == 77


def test_load_node_lists_checkpoints_and_optional_encoders(twins, tmp_path):
    """The node lists checkpoints/ for the diffusion model and VAE inputs (Stability's bundles), offers
    "none" first for the optional encoders, and resolves a bundle and three encoders to one model."""
    import shutil

    from omni_diffusion_nodes.nodes import comfy_bridge
    from omni_diffusion_nodes.nodes.load_model_files import OmniLoadModelFiles

    _folder, files = twins("sd3")
    good = files["fp32"]
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(good.diffusion_model, tmp_path / "checkpoints" / "sd3.5_medium.safetensors")
    shutil.copytree(Path(good.text_encoder).parent, tmp_path / "text_encoders")
    shutil.copytree(Path(good.vae).parent, tmp_path / "vae")
    host = comfy_bridge.HEADLESS
    saved = host.models_dir
    host.models_dir = tmp_path
    try:
        inputs = OmniLoadModelFiles.INPUT_TYPES()
        assert "sd3.5_medium.safetensors" in inputs["required"]["diffusion_model"][0]
        assert "sd3.5_medium.safetensors" in inputs["required"]["vae"][0]
        assert inputs["optional"]["text_encoder_2"][0][0] == "none" and \
            "clip_g.safetensors" in inputs["optional"]["text_encoder_2"][0]
        (spec,) = OmniLoadModelFiles().load("sd3.5_medium.safetensors", "clip_l.safetensors", "sd3.5_vae.safetensors",
                                            "fp32", "cpu", text_encoder_2="clip_g.safetensors",
                                            text_encoder_3="t5xxl_fp16.safetensors")
        assert spec.family_key == "sd3" and Path(spec.files.diffusion_model).parent.name == "checkpoints"
        with pytest.raises(OmniInputError, match="text_encoder_3 = 'none'.*needs T5"):
            OmniLoadModelFiles().load("sd3.5_medium.safetensors", "clip_l.safetensors", "sd3.5_vae.safetensors",
                                      "fp32", "cpu", text_encoder_2="clip_g.safetensors")
    finally:
        host.models_dir = saved


def test_stable_audio_checkpoint_parts_and_refusals(twins, tmp_path):
    """Stable-Audio-Open's checkpoint bundles DiT, VAE and seconds conditioners under the prefixes ComfyUI
    reads (model.model., pretransform.model., conditioner.conditioners.). A DiT saved without the
    conditioners, and a T5 of another width than the bundle's prompt projection reads, are refused from
    the headers, naming the fix."""
    from omni_backend.families.stable_audio import single_file as stable_audio

    _folder, files = twins("stable-audio")
    good = files["fp32"]
    assert good.diffusion_model == good.vae and Path(good.vae).parent.name == "checkpoints"
    with safetensors.safe_open(good.diffusion_model, "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert {key.split(".")[0] + "." + key.split(".")[1] + "." for key in keys} == set(stable_audio.BUNDLE.values())
    # ComfyUI recognises the DiT by its rotary table and the VAE by this tensor (comfy/model_detection.py, sd.py).
    assert {"model.model.transformer.rotary_pos_emb.inv_freq", "pretransform.model.decoder.layers.1.layers.0.beta"} \
        <= set(keys)
    dit_only = tmp_path / "stable_audio_dit.safetensors"
    state = safetensors.torch.load_file(good.diffusion_model)
    safetensors.torch.save_file({key: value for key, value in state.items() if key.startswith("model.model.")}, dit_only,
                                metadata=metadata)
    with pytest.raises(OmniInputError, match="diffusion_model = 'stable_audio_dit.safetensors'.*without the seconds "
                                             "conditioners.*stable_audio_open_1.0.safetensors"):
        inspect_model_files(ModelFiles(str(dit_only), good.text_encoder, good.vae))
    # A T5 twice as wide (header-sized tensors of T5's names): refused before any weight loads.
    wide = {"shared.weight": torch.zeros(8, 64), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(64, 64),
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": torch.zeros(32, 4),
            "encoder.block.0.layer.1.DenseReluDense.wi.weight": torch.zeros(16, 64)}
    t5_large = tmp_path / "t5_large.safetensors"
    safetensors.torch.save_file(wide, t5_large)
    with pytest.raises(OmniInputError, match="text_encoder = 't5_large.safetensors'.*width is 64.*width 32.*"
                                             "t5_base.safetensors"):
        inspect_model_files(ModelFiles(good.diffusion_model, str(t5_large), good.vae))


def test_stable_audio_vae_names_at_the_released_size():
    """At the released Oobleck VAE's size (5 blocks), the map names the tensors as stable-audio-tools
    saves them: the first and last convs and snakes around blocks 1-5, residual units inside."""
    from omni_backend.families.stable_audio import single_file as stable_audio

    names = stable_audio._vae_names(stable_audio.VAE)
    assert names["encoder.conv1.weight_v"] == "encoder.layers.0.weight_v"
    assert names["encoder.block.4.res_unit3.conv2.bias"] == "encoder.layers.5.layers.2.layers.3.bias"
    assert names["encoder.block.0.conv1.weight_g"] == "encoder.layers.1.layers.4.weight_g"
    assert names["encoder.snake1.alpha"] == "encoder.layers.6.alpha"
    assert names["encoder.conv2.bias"] == "encoder.layers.7.bias"
    assert names["decoder.block.0.snake1.beta"] == "decoder.layers.1.layers.0.beta"
    assert names["decoder.block.2.conv_t1.weight_v"] == "decoder.layers.3.layers.1.weight_v"
    assert names["decoder.block.1.res_unit1.snake2.alpha"] == "decoder.layers.2.layers.2.layers.2.alpha"
    assert names["decoder.conv2.weight_v"] == "decoder.layers.7.weight_v"
    assert len(set(names.values())) == len(names)  # one file name per tensor


@pytest.mark.slow
def test_longcat_edit_files_give_the_folder_twins_output_and_refuse_prompt_rewrite(tmp_path):
    """LongCat-Image-Edit's DiT has LongCat-Image's names and shapes: auto reads LongCat-Image, the family
    input names the edit model, whose files then give the folder twin's output. ComfyUI's Qwen2.5-VL files
    have no output head, so LongCat's prompt rewrite (which generates text) is refused, not run on a stand-in."""
    family = "longcat-image-edit"
    folder = FAMILIES[family].make_tiny(tmp_path / "folder")
    written = {name: str(path) for name, path in write_comfy_files(family, tmp_path / "files", "fp32").items()}
    assert Path(written["diffusion_model"]).name == "longcat_image_edit_fp32.safetensors"
    plain = ModelFiles(written["diffusion_model"], written["text_encoder"], written["vae"])
    assert inspect_model_files(plain).family_key == "longcat-image"
    files = ModelFiles(written["diffusion_model"], written["text_encoder"], written["vae"], family=family)
    info = inspect_model_files(files)
    assert info.family_key == family and info.components["text_processor"] == ("transformers", "Qwen2VLProcessor")
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    request = GenerationRequest(prompt="make it red", negative_prompt="blurry", steps=2, guidance=4.0, width=64,
                                height=64, images=(image,))
    engine = Engine()
    try:
        reference = engine.generate(ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu"), request).latents
        spec = ModelSpec.from_files(files, dtype="fp32", device="cpu")
        latents = engine.generate(spec, request).latents
        assert torch.allclose(latents, reference, atol=2e-5), float((latents - reference).abs().max())
        rewrite = GenerationRequest(prompt="a cat", steps=1, width=64, height=64, options={"prompt_rewrite": True})
        with pytest.raises(OmniInputError, match="prompt_rewrite = True: .*without the language-model output head.*"
                                                 "turn prompt_rewrite off"):
            engine.generate(ModelSpec.from_files(dataclasses.replace(files, family="longcat-image"), dtype="fp32",
                                                 device="cpu"), rewrite)
    finally:
        engine.unload_all()


def test_ovis_gated_mlps_compute_as_comfyuis_formulas_on_the_file_tensors(twins):
    """The file's gated MLPs, run as ComfyUI runs them (comfy/ldm/flux: YakMLP down(silu(gate(x)) * up(x));
    a single block's linear1 MLP part: silu(second half) * first half), equal diffusers' modules: the map
    puts value and gate rows where ComfyUI reads them, not only somewhere that reads back."""
    import torch.nn.functional as F
    from diffusers import OvisImageTransformer2DModel

    from omni_backend.single_file.weights_file import inspect_weights_file, read_tensors

    folder, files = twins("ovis-image")
    model = OvisImageTransformer2DModel.from_pretrained(folder / "transformer").eval()
    file = read_tensors(inspect_weights_file(files["fp32"].diffusion_model, "diffusion_model"), torch.float32)
    inner = model.config.attention_head_dim * model.config.num_attention_heads
    x = torch.randn(3, inner, generator=torch.Generator().manual_seed(0))

    def linear(name, value):
        return F.linear(value, file[f"{name}.weight"], file[f"{name}.bias"])

    mlp = "double_blocks.0.img_mlp"
    comfy = linear(f"{mlp}.down_proj", F.silu(linear(f"{mlp}.gate_proj", x)) * linear(f"{mlp}.up_proj", x))
    with torch.no_grad():
        assert torch.allclose(model.transformer_blocks[0].ff(x), comfy, atol=1e-5)
        single = model.single_transformer_blocks[0]
        fused = linear("single_blocks.0.linear1", x)[:, 3 * inner:]
        half = fused.shape[-1] // 2
        value, gate = single.proj_mlp(x).chunk(2, dim=-1)
        assert torch.allclose(single.act_mlp(gate) * value, F.silu(fused[:, half:]) * fused[:, :half], atol=1e-5)
        # The text norm ComfyUI applies before txt_in is diffusers' context_embedder_norm.
        assert torch.equal(file["txt_norm.weight"], model.context_embedder_norm.weight)


def test_ovis_layout_at_the_released_size_has_the_released_files_key_count():
    """At Ovis-Image-7B's size (6 double, 27 single blocks) the map writes 397 tensors: the count of
    Comfy-Org's ovis_image_bf16.safetensors (as a published record of that file gives it). Names only,
    on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import OvisImageTransformer2DModel

    from omni_backend.families.ovis_image import single_file as ovis_image

    with init_empty_weights():
        model = OvisImageTransformer2DModel.from_config(ovis_image.TRANSFORMER)
    state = {key: torch.empty(value.shape, device="meta") for key, value in model.state_dict().items()}
    written = ovis_image.transformer_file_keys(state, dict(model.config))
    assert len(written) == 397 and "txt_norm.weight" in written
    assert "double_blocks.5.img_mlp.gate_proj.weight" in written and "single_blocks.26.linear1.weight" in written


# Runs inside ComfyUI (the real-ComfyUI tier, tests/comfyui_host.py): its own
# Stable Audio DiT, Oobleck VAE and seconds conditioners at the released size, on the meta device.
COMFY_STABLE_AUDIO = """
import json, sys, torch
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.ldm.audio.autoencoder, comfy.ldm.audio.dit, comfy.ldm.audio.embedders, comfy.ops
with torch.device("meta"):
    parts = {"model.model.": comfy.ldm.audio.dit.AudioDiffusionTransformer(
                 io_channels=64, embed_dim=1536, cond_token_dim=768, global_cond_dim=1536, depth=24, num_heads=24,
                 audio_model="dit1.0", operations=comfy.ops.disable_weight_init),
             "pretransform.model.": comfy.ldm.audio.autoencoder.AudioOobleckVAE(),
             "conditioner.conditioners.seconds_start.": comfy.ldm.audio.embedders.NumberConditioner(768, 0, 512),
             "conditioner.conditioners.seconds_total.": comfy.ldm.audio.embedders.NumberConditioner(768, 0, 512)}
print(json.dumps({prefix + key: list(value.shape) for prefix, module in parts.items()
                  for key, value in module.state_dict().items()}))
"""


@real_comfyui
def test_comfyuis_stable_audio_modules_have_the_names_and_shapes_the_maps_write(tmp_path, comfyui_code):
    """At the released size, ComfyUI's own modules hold exactly the tensors (names, shapes) the three maps
    write into the checkpoint, but for what ComfyUI handles on load: torch's weight-norm names (the file's
    weight_g / weight_v, which torch converts) and the all-zero LayerNorm betas it drops."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioProjectionModel

    from omni_backend.families.stable_audio import single_file as stable_audio

    script = tmp_path / "comfy_stable_audio.py"
    script.write_text(COMFY_STABLE_AUDIO)
    done = comfyui_code.run(script)
    assert done.returncode == 0, done.stderr[-3000:]
    weight_norm = (("parametrizations.weight.original0", "weight_g"), ("parametrizations.weight.original1", "weight_v"))
    comfy = {}
    for key, shape in json.loads(done.stdout.strip().splitlines()[-1]).items():
        for new, old in weight_norm:
            key = key.replace(new, old)
        comfy[key] = tuple(shape)
    ours = {}
    for cls, config, component, prefix in (
            (StableAudioDiTModel, stable_audio.TRANSFORMER, stable_audio.PROFILE.transformer, "model.model."),
            (AutoencoderOobleck, stable_audio.VAE, stable_audio.PROFILE.vae, "pretransform.model."),
            (StableAudioProjectionModel, stable_audio.PROJECTION, stable_audio.PROJECTION_MODEL,
             "conditioner.conditioners.")):
        with init_empty_weights():
            model = cls.from_config(config)
        state = {key: torch.empty(value.shape, device="meta") for key, value in model.state_dict().items()}
        ours.update({prefix + key: tuple(value.shape)
                     for key, value in component.to_file_keys(state, dict(model.config)).items()
                     if not key.endswith((".pre_norm.beta", ".cross_attend_norm.beta", ".ff_norm.beta"))})
    assert ours == comfy and len(ours) == 673
