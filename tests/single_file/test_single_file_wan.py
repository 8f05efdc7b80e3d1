"""Wan2.2 (T2V A14B, I2V A14B, TI2V 5B) from ComfyUI's single files: the same output as the diffusers
folder twin, the tokenizer carried in the UMT5 file, and the refusals of files that do not belong together."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from comfyui_host import real_comfyui
from omni_backend.engine import Engine
from omni_backend.errors import OmniInputError
from omni_backend.families import FAMILIES
from omni_backend.request import GenerationRequest
from omni_backend.single_file.comfy_layout import write_comfy_files
from omni_backend.single_file.model_files import PROFILES, ModelFiles, inspect_model_files
from omni_backend.spec import ModelSpec

IMAGE = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))


def _request(family: str) -> GenerationRequest:
    settings = {**dict(prompt="a red fox running", negative_prompt="blurry", steps=3, guidance=4.0, width=64,
                       height=64, frames=9), **FAMILIES[family].tiny_request_overrides()}
    if FAMILIES[family].requires_image:
        settings["images"] = (IMAGE,)
    return GenerationRequest(**settings)


def _files(written: dict, **changes) -> ModelFiles:
    paths = {name: str(path) for name, path in written.items()}
    return ModelFiles(paths["diffusion_model"], paths["text_encoder"], paths["vae"],
                      diffusion_model_2=paths.get("diffusion_model_2", ""), **changes)


def _folder_twin(family: str, directory: Path) -> Path:
    """The tiny diffusers folder with what the files cannot carry set as the released folders have it
    (the profile's scheduler and boundary): the two must then differ in nothing but the weights' source."""
    import diffusers

    folder = FAMILIES[family].make_tiny(directory)
    profile = PROFILES[family]
    scheduler = getattr(diffusers, profile.scheduler_class).from_config(profile.scheduler_config)
    shutil.rmtree(folder / "scheduler")
    scheduler.save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", profile.scheduler_class]
    if profile.pipeline_kwargs.get("boundary_ratio") is not None:
        index["boundary_ratio"] = profile.pipeline_kwargs["boundary_ratio"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """Per family, on first use: the folder twin and the files in the formats asked for."""
    root = tmp_path_factory.mktemp("wan-files")
    made: dict = {}

    def get(family: str, fmt: str):
        if family not in made:
            made[family] = {"folder": _folder_twin(family, root / family / "folder")}
        if fmt not in made[family]:
            made[family][fmt] = write_comfy_files(family, root / family / fmt, fmt)
        return made[family]["folder"], made[family][fmt]

    engine = Engine()
    yield get, engine
    engine.unload_all()


@pytest.mark.parametrize("family", ["wan2.2", "wan2.2-i2v", "wan2.2-ti2v"])
def test_files_give_the_folder_twins_output(wan, family):
    get, engine = wan
    folder, written = get(family, "fp32")
    request = _request(family)
    spec = ModelSpec.from_files(_files(written), dtype="fp32", device="cpu")
    assert spec.family_key == family  # told apart by the DiT's input channels alone (auto)
    reference = engine.generate(ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu"), request).latents
    pipe = engine.loaded(spec).pipe
    calls = {name: 0 for name in ("transformer", "transformer_2") if getattr(pipe, name, None) is not None}
    hooks = [getattr(pipe, name).register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
             for name in calls]
    try:
        latents = engine.generate(spec, request).latents
    finally:
        for hook in hooks:
            hook.remove()
    assert all(calls.values()) and len(calls) == (2 if PROFILES[family].second_expert else 1), calls
    # The same weights; only the CPU kernels' memory alignment differs (float32 rounding, see test_single_file).
    assert torch.allclose(latents, reference, atol=2e-5), float((latents - reference).abs().max())
    engine.unload_all()


@pytest.mark.slow
def test_bf16_files_are_the_folders_weights_and_output(wan):
    """bf16 files: every weight of both experts, the encoder and the VAE equals the folder's loaded in bf16
    (the modules diffusers keeps in float32 are float32 in the file too), and so does the output."""
    get, engine = wan
    folder, written = get("wan2.2", "bf16")
    request = _request("wan2.2")
    files_spec = ModelSpec.from_files(_files(written), dtype="bf16", device="cpu")
    folder_spec = ModelSpec.from_folder(str(folder), dtype="bf16", device="cpu")
    latents = engine.generate(files_spec, request).latents
    reference = engine.generate(folder_spec, request).latents
    for name in ("transformer", "transformer_2", "text_encoder", "vae"):
        ours, theirs = (getattr(engine.loaded(s).pipe, name).state_dict() for s in (files_spec, folder_spec))
        assert set(ours) == set(theirs), name
        unequal = [key for key in theirs if ours[key].dtype != theirs[key].dtype or not torch.equal(ours[key], theirs[key])]
        assert not unequal, (name, unequal[:3])
    assert torch.equal(latents, reference)
    engine.unload_all()


def test_fp8_scaled_files_stay_within_fp8_error(wan):
    get, engine = wan
    folder, written = get("wan2.2", "fp8_scaled")
    assert {Path(p).name for p in written.values()} == {
        "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"}, "ComfyUI's template names"
    request = _request("wan2.2")
    reference = engine.generate(ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu"), request).latents
    latents = engine.generate(ModelSpec.from_files(_files(written), dtype="fp32", device="cpu"), request).latents
    error = float((latents - reference).abs().max() / reference.abs().max())
    assert 0 < error < 0.06, f"relative error {error}: FP8 rounding only, never the scales' orders of magnitude"
    engine.unload_all()


def test_the_umt5_file_carries_a_tokenizer_comfyui_reads_the_same_way(wan):
    """The `spiece_model` bytes: ComfyUI tokenizes with sentencepiece itself (SPieceTokenizer); the loader
    builds transformers' T5Tokenizer from them. Both give the folder twin's token ids."""
    import sentencepiece
    from omni_backend.single_file import umt5
    from omni_backend.single_file.weights_file import inspect_weights_file
    from transformers import AutoTokenizer

    folder, written = wan[0]("wan2.2", "fp32")
    encoder = inspect_weights_file(written["text_encoder"], "text_encoder")
    model = safetensors.torch.load_file(written["text_encoder"])["spiece_model"].numpy().tobytes()
    comfy = sentencepiece.SentencePieceProcessor(model_proto=model, add_bos=False, add_eos=True)
    ours = umt5.tokenizer_from_file(encoder)
    theirs = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    for text in ("a red fox running through fresh snow", "Blurry,  static; LOW quality 42!"):
        assert ours(text).input_ids == theirs(text).input_ids == comfy.encode(text), text


def test_wrong_wan_files_are_refused_with_the_fix(wan, tmp_path):
    get, _engine = wan
    _folder, t2v = get("wan2.2", "fp32")
    _folder, ti2v = get("wan2.2-ti2v", "fp32")
    with pytest.raises(OmniInputError, match=r"diffusion_model_2 = 'none': wan2.2 \(A14B\) runs two expert.*"
                                             r"low-noise expert \(wan2.2_t2v_low_noise_14B_\*.safetensors\)"):
        inspect_model_files(_files({**t2v, "diffusion_model_2": ""}))
    with pytest.raises(OmniInputError, match="diffusion_model_2 = 'wan2.2_ti2v_5B_fp32.safetensors': it holds the "
                                             "diffusion model of wan2.2-ti2v.*choose wan2.2's low-noise expert"):
        inspect_model_files(_files({**t2v, "diffusion_model_2": ti2v["diffusion_model"]}))
    with pytest.raises(OmniInputError, match="diffusion_model_2 = .*one diffusion model.*set diffusion_model_2 to none"):
        inspect_model_files(_files({**ti2v, "diffusion_model_2": t2v["diffusion_model_2"]}))
    # The experts share their shapes: ComfyUI's names are what tells them apart.
    swapped = {name: tmp_path / Path(path).name for name, path in t2v.items()}
    for name, path in t2v.items():
        swapped[name].symlink_to(path)
    swapped["diffusion_model"], swapped["diffusion_model_2"] = swapped["diffusion_model_2"], swapped["diffusion_model"]
    with pytest.raises(OmniInputError, match="diffusion_model = 'wan2.2_t2v_low_noise.*swapped.*diffusion_model takes "
                                             "the high-noise expert"):
        inspect_model_files(_files(swapped))
    # An explicit family the shapes contradict, and a VAE of the other latent width.
    with pytest.raises(OmniInputError, match=r"family = 'wan2.2-i2v': .*16 input channels \(family wan2.2\).*"
                                             "set family to auto or wan2.2"):
        inspect_model_files(_files(t2v, family="wan2.2-i2v"))
    assert inspect_model_files(_files(t2v, family="wan2.2")).family_key == "wan2.2"
    with pytest.raises(OmniInputError, match="vae = 'wan_2.1_vae.safetensors': it makes 16-channel latents.*48 "
                                             "channels.*choose wan2.2_vae.safetensors"):
        inspect_model_files(_files({**ti2v, "vae": t2v["vae"]}))
    # A text encoder of another width (another T5), and one without its tokenizer.
    state = safetensors.torch.load_file(t2v["text_encoder"])
    wider = {key: value if key == "spiece_model" else torch.zeros(*[64 if size == 32 else size for size in value.shape])
             for key, value in state.items()}
    safetensors.torch.save_file(wider, tmp_path / "umt5_wide.safetensors")
    with pytest.raises(OmniInputError, match="text_encoder = 'umt5_wide.safetensors': its hidden size is 64.*width 32"):
        inspect_model_files(_files({**t2v, "text_encoder": tmp_path / "umt5_wide.safetensors"}))
    safetensors.torch.save_file({k: v for k, v in state.items() if k != "spiece_model"}, tmp_path / "umt5_bare.safetensors")
    with pytest.raises(OmniInputError, match="text_encoder = 'umt5_bare.safetensors': it carries no tokenizer"):
        inspect_model_files(_files({**t2v, "text_encoder": tmp_path / "umt5_bare.safetensors"}))


def test_load_node_takes_the_second_expert_and_the_family(headless, nodes):
    loader = nodes["OmniLoadModelFiles"]
    optional = loader.INPUT_TYPES()["optional"]
    assert list(optional)[:2] == ["family", "diffusion_model_2"]
    assert optional["family"][0][0] == "auto" and "wan2.2-ti2v" in optional["family"][0]
    assert optional["diffusion_model_2"][0][0] == "none"
    assert "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors" in optional["diffusion_model_2"][0]
    names = ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
             "wan_2.1_vae.safetensors")
    (spec,) = loader().load(*names, "fp32", "cpu", family="auto",
                            diffusion_model_2="wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors")
    assert spec.family_key == "wan2.2" and spec.files.diffusion_model_2.endswith("low_noise_14B_fp8_scaled.safetensors")
    with pytest.raises(OmniInputError, match="diffusion_model_2 = 'none'"):
        loader().load(*names, "fp32", "cpu")


# ---- ComfyUI reads the tiny twins as its own files -------------------------------------------------
# Runs inside ComfyUI (the real-ComfyUI tier, tests/comfyui_host.py): its own
# Wan DiT, Wan 2.1 / 2.2 VAE and UMT5 modules load the files make-tiny --layout comfy writes, strictly
# (every key and shape), so the key maps above write what ComfyUI itself reads.
COMFY_READS = """
import json, sys, torch, safetensors, safetensors.torch
paths = json.loads(sys.argv[1])
sys.argv = [sys.argv[0], "--cpu"]  # no GPU here: ComfyUI's options, read as its main.py has them read
import comfy.options
comfy.options.enable_args_parsing()
import comfy.ldm.wan.model, comfy.ldm.wan.vae, comfy.ldm.wan.vae2_2, comfy.ops, comfy.text_encoders.t5
ops = comfy.ops.disable_weight_init
def read(path):
    config = json.loads(safetensors.safe_open(path, "pt").metadata()["config"])
    state = {k.removeprefix("model.diffusion_model."): v for k, v in safetensors.torch.load_file(path).items()}
    return config, state
for path in paths:
    config, state = read(path)
    if "/diffusion_models/" in path:
        c = config
        module = comfy.ldm.wan.model.WanModel(model_type="t2v", patch_size=tuple(c["patch_size"]), in_dim=c["in_channels"],
            dim=c["num_attention_heads"] * c["attention_head_dim"], ffn_dim=c["ffn_dim"], freq_dim=c["freq_dim"],
            text_dim=c["text_dim"], out_dim=c["out_channels"], num_heads=c["num_attention_heads"],
            num_layers=c["num_layers"], qk_norm=True, cross_attn_norm=True, eps=1e-6, operations=ops)
    elif "/vae/" in path:
        c = config
        kwargs = dict(dim=c["base_dim"], z_dim=c["z_dim"], dim_mult=c["dim_mult"], num_res_blocks=c["num_res_blocks"],
                      attn_scales=c["attn_scales"], temperal_downsample=c["temperal_downsample"], dropout=0.0)
        if c.get("is_residual"):
            module = comfy.ldm.wan.vae2_2.WanVAE(dec_dim=c["decoder_base_dim"], **kwargs)
        else:
            module = comfy.ldm.wan.vae.WanVAE(**kwargs)
    else:
        state.pop("spiece_model")
        module = comfy.text_encoders.t5.T5(dict(config, dense_act_fn="gelu_pytorch_tanh", is_gated_act=True),
                                           torch.float32, "cpu", ops)
    module.load_state_dict(state, strict=True)
print("read", len(paths))
"""


@real_comfyui
def test_comfyui_loads_the_tiny_files_strictly(wan, tmp_path, comfyui_code):
    _folder, t2v = wan[0]("wan2.2", "fp32")
    _folder, ti2v = wan[0]("wan2.2-ti2v", "fp32")
    paths = [str(t2v[name]) for name in ("diffusion_model", "vae", "text_encoder")]
    paths += [str(ti2v[name]) for name in ("diffusion_model", "vae")]
    script = tmp_path / "comfy_reads.py"
    script.write_text(COMFY_READS)
    done = comfyui_code.run(script, json.dumps(paths))
    assert done.returncode == 0 and "read 5" in done.stdout, done.stderr[-3000:]


@pytest.mark.slow
def test_two_expert_files_cross_to_worker_ranks(wan):
    """The spec names both experts' files (and the family); each rank reads them itself: Ulysses 2 equals
    one process."""
    from omni_backend.parallel.config import ParallelConfig

    get, engine = wan
    _folder, written = get("wan2.2", "fp32")
    request = _request("wan2.2")
    spec = ModelSpec.from_files(_files(written, family="wan2.2"), dtype="fp32", device="cpu")
    reference = engine.generate(spec, request).latents
    parallel = engine.generate(spec.replace(parallel=ParallelConfig(ulysses_degree=2)), request).latents
    engine.unload_all()
    assert torch.allclose(parallel, reference, atol=2e-5), float((parallel - reference).abs().max())
