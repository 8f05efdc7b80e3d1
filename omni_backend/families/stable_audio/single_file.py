"""Stable-Audio-Open 1.0 from ComfyUI's files: `checkpoints/stable_audio_open_1.0.safetensors` (Stability's
`model.safetensors`, which bundles the DiT, the Oobleck VAE and the seconds conditioners) and
`text_encoders/t5_base.safetensors` (T5-base's encoder; tokenizer: ComfyUI's comfy/text_encoders/t5_tokenizer).

The bundle keeps stable-audio-tools' names, under the prefixes ComfyUI reads them by (comfy/supported_models.py
StableAudio, comfy/sd.py): the DiT under `model.model.`, the VAE under `pretransform.model.`, the pipeline's
projection model (the seconds_start / seconds_total number embedders, and the prompt's projection when T5's
width differs from the conditioning width) under `conditioner.conditioners.`.

diffusers' only map between those names and its classes is a conversion script (scripts/convert_stable_audio.py,
not importable), so the maps are written here, each as one table of (original, diffusers) names built from
the diffusers model's own key list: the reader and `make-tiny --layout comfy` use the same table, and make-tiny
checks every written file reads back to the same tensors (comfy_layout.check_round_trip).
"""

from __future__ import annotations

import json
import re

from ...errors import OmniInputError
from ...system.process_lock import process_lock
from ...single_file import text_encoders
from ...single_file.fused_keys import Rule, rename, to_diffusers, to_original
from ...single_file.profile import Component, FilesProfile, with_file_config
from ...single_file.weights_file import WeightsFile, inspect_weights_file

# The released stable-audio-open-1.0 configs (its diffusers folder's transformer/, vae/, projection_model/,
# scheduler/); the shapes decide every size they can, the file's metadata what they cannot.
TRANSFORMER = dict(sample_size=1024, in_channels=64, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                   num_key_value_attention_heads=12, out_channels=64, cross_attention_dim=768, time_proj_dim=256,
                   global_states_input_dim=1536, cross_attention_input_dim=768)
VAE = dict(encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 8, 8], channel_multiples=[1, 2, 4, 8, 16],
           decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=44100)
PROJECTION = dict(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512)
SCHEDULER = dict(num_train_timesteps=1000, sigma_min=0.3, sigma_max=500.0, solver_order=2,
                 prediction_type="v_prediction", sigma_data=1.0, sigma_schedule="exponential", rho=7.0,
                 final_sigmas_type="zero")
# Where each part sits in the bundle (what make-tiny writes; the reader finds them through weights_file's
# BUNDLE_PREFIXES, which list the same prefixes).
BUNDLE = {"diffusion_model": "model.model.", "vae": "pretransform.model.",
          "projection_model": "conditioner.conditioners."}


def carried_config(file: WeightsFile, part: str, config: dict) -> dict:
    """`config` updated by the bundle's `<part>_config` metadata (the DiT's is `config`, read by
    with_file_config): the tiny twins carry what shapes cannot tell (sample rate, window) that way."""
    text = file.metadata.get(f"{part}_config")
    if not text:
        return config
    return {**config, **{key: value for key, value in json.loads(text).items() if not key.startswith("_")}}


# ---- the DiT ------------------------------------------------------------------------------------------
def transformer_config(file: WeightsFile) -> dict:
    inner = file.shape("transformer.project_in.weight")[0]
    head_dim = TRANSFORMER["attention_head_dim"]  # shapes cannot tell it (the rotary table is 32 wide either way)
    if file.metadata.get("config"):
        head_dim = json.loads(file.metadata["config"]).get("attention_head_dim", head_dim)
    key_value_rows = file.shape("transformer.layers.0.cross_attn.to_kv.weight")[0]  # keys and values stacked
    derived = dict(in_channels=file.shape("preprocess_conv.weight")[0],
                   out_channels=file.shape("postprocess_conv.weight")[0],
                   num_layers=file.count("transformer.layers", ".self_attn.to_qkv.weight"),
                   num_attention_heads=inner // head_dim, num_key_value_attention_heads=key_value_rows // 2 // head_dim,
                   cross_attention_dim=file.shape("to_cond_embed.0.weight")[0],
                   cross_attention_input_dim=file.shape("to_cond_embed.0.weight")[1],
                   global_states_input_dim=file.shape("to_global_embed.0.weight")[1],
                   time_proj_dim=2 * file.shape("timestep_features.weight")[0])
    return with_file_config(file, {**TRANSFORMER, **derived}, "diffusion_model")


def transformer_rules(config: dict) -> list[Rule]:
    rules = [rename("timestep_features.weight", "time_proj.weight"),
             rename("preprocess_conv.weight", "preprocess_conv.weight"),
             rename("postprocess_conv.weight", "postprocess_conv.weight"),
             rename("transformer.project_in.weight", "proj_in.weight"),
             rename("transformer.project_out.weight", "proj_out.weight")]
    for original, ours in (("to_timestep_embed", "timestep_proj"), ("to_global_embed", "global_proj"),
                           ("to_cond_embed", "cross_attention_proj")):
        rules += [rename(f"{original}.{i}.weight", f"{ours}.{i}.weight") for i in (0, 2)]
    rules += [rename(f"to_timestep_embed.{i}.bias", f"timestep_proj.{i}.bias") for i in (0, 2)]
    for i in range(config["num_layers"]):
        old, new = f"transformer.layers.{i}.", f"transformer_blocks.{i}."
        rules += [Rule(old + "self_attn.to_qkv.weight", tuple(new + f"attn1.to_{x}.weight" for x in "qkv")),
                  rename(old + "self_attn.to_out.weight", new + "attn1.to_out.0.weight"),
                  rename(old + "cross_attn.to_q.weight", new + "attn2.to_q.weight"),
                  Rule(old + "cross_attn.to_kv.weight", (new + "attn2.to_k.weight", new + "attn2.to_v.weight")),
                  rename(old + "cross_attn.to_out.weight", new + "attn2.to_out.0.weight"),
                  rename(old + "ff.ff.0.proj.weight", new + "ff.net.0.proj.weight"),
                  rename(old + "ff.ff.0.proj.bias", new + "ff.net.0.proj.bias"),
                  rename(old + "ff.ff.2.weight", new + "ff.net.2.weight"),
                  rename(old + "ff.ff.2.bias", new + "ff.net.2.bias")]
        # stable-audio-tools' LayerNorm: gamma, and beta as an all-zero buffer (diffusers' norm1/2/3).
        for norm, ours in (("pre_norm", "norm1"), ("cross_attend_norm", "norm2"), ("ff_norm", "norm3")):
            rules += [rename(f"{old}{norm}.gamma", f"{new}{ours}.weight"), rename(f"{old}{norm}.beta", f"{new}{ours}.bias")]
    return rules


ROTARY = "transformer.rotary_pos_emb.inv_freq"  # a fixed table diffusers computes itself


def transformer_keys(state_dict: dict, config: dict) -> dict:
    state = {key: value for key, value in state_dict.items() if key != ROTARY}
    out = to_diffusers(state, transformer_rules(config))
    if "time_proj.weight" in out:  # FourierFeatures(1, n): [n/2, 1]; diffusers' projection: [n/2]
        out["time_proj.weight"] = out["time_proj.weight"].reshape(-1)
    return out


def transformer_file_keys(state_dict: dict, config: dict) -> dict:
    import torch

    out = to_original(state_dict, transformer_rules(config))
    features = out.get("timestep_features.weight")
    if features is not None:
        out["timestep_features.weight"] = features.reshape(-1, 1)
    if features is not None and features.is_floating_point():  # weights (not a name-only or mask map)
        # The rotary table ComfyUI recognises the model by (max(head_dim // 2, 32) wide, base 10000).
        dim = max(config["attention_head_dim"] // 2, 32)
        out[ROTARY] = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return out


# ---- the Oobleck VAE ------------------------------------------------------------------------------------
def vae_config(file: WeightsFile) -> dict:
    blocks = file.count("encoder.layers", ".layers.4.weight_v")
    hidden, audio_channels, _ = file.shape("encoder.layers.0.weight_v")
    outs = [file.shape(f"encoder.layers.{i + 1}.layers.4.weight_v")[0] for i in range(blocks)]
    # diffusers' channel_multiples are the blocks' output widths over the first conv's (it prepends the 1).
    multiples = [out // hidden for out in outs]
    first_decoder = file.shape("decoder.layers.0.weight_v")
    derived = dict(encoder_hidden_size=hidden, audio_channels=audio_channels, channel_multiples=multiples,
                   downsampling_ratios=[file.shape(f"encoder.layers.{i + 1}.layers.4.weight_v")[2] // 2
                                        for i in range(blocks)],
                   decoder_channels=first_decoder[0] // multiples[-1], decoder_input_channels=first_decoder[1])
    return carried_config(file, "vae", {**VAE, **derived})


def _vae_original(key: str, blocks: int) -> str:
    """diffusers' AutoencoderOobleck name -> stable-audio-tools' (the inverse of diffusers' conversion script)."""
    unit = {"snake1": "0", "conv1": "1", "snake2": "2", "conv2": "3"}  # a residual unit's layers
    side, rest = key.split(".", 1)
    top = {"conv1": "0", "snake1": str(blocks + 1), "conv2": str(blocks + 2)}
    head, _, tail = rest.partition(".")
    if head in top:
        return f"{side}.layers.{top[head]}.{tail}"
    number, name, tail = re.match(r"block\.(\d+)\.([^.]+)\.(.*)", rest).groups()
    inner = {"encoder": {"snake1": "3", "conv1": "4"}, "decoder": {"snake1": "0", "conv_t1": "1"}}[side]
    if name.startswith("res_unit"):  # encoder: units 1-3 are layers 0-2; decoder: layers 2-4
        index = int(name[len("res_unit"):]) - 1 + (0 if side == "encoder" else 2)
        part, _, leaf = tail.partition(".")
        return f"{side}.layers.{int(number) + 1}.layers.{index}.layers.{unit[part]}.{leaf}"
    return f"{side}.layers.{int(number) + 1}.layers.{inner[name]}.{tail}"


def _vae_names(config: dict) -> dict[str, str]:
    """diffusers name -> original name, for every tensor of the Oobleck VAE of this config."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderOobleck

    with process_lock(), init_empty_weights():  # a process-wide patch of torch.nn.Module: see process_lock.py
        keys = list(AutoencoderOobleck.from_config(config).state_dict())
    blocks = len(config["downsampling_ratios"])
    return {key: _vae_original(key, blocks) for key in keys}


def vae_keys(state_dict: dict, config: dict) -> dict:
    names = {original: ours for ours, original in _vae_names(config).items()}
    # Snake's alpha / beta: one value per channel, [C] in the file, [1, C, 1] in diffusers.
    return {names.get(key, key): value.reshape(1, -1, 1) if key.endswith((".alpha", ".beta")) else value
            for key, value in state_dict.items()}


def vae_file_keys(state_dict: dict, config: dict) -> dict:
    names = _vae_names(config)
    return {names.get(key, key): value.reshape(-1) if value is not None and key.endswith((".alpha", ".beta"))
            else value for key, value in state_dict.items()}


# ---- the projection model (seconds conditioners, prompt projection) -----------------------------------------
def projection_config(file: WeightsFile) -> dict:
    width = file.shape("seconds_start.embedder.embedding.1.weight")[0]
    projection = file.shape("prompt.proj_out.weight")
    derived = dict(conditioning_dim=width, text_encoder_dim=projection[1] if projection else width)
    return carried_config(file, "projection_model", {**PROJECTION, **derived})


def projection_rules() -> list[Rule]:
    rules = [rename("prompt.proj_out.weight", "text_projection.weight"),
             rename("prompt.proj_out.bias", "text_projection.bias")]
    for original, ours in (("seconds_start", "start_number_conditioner"), ("seconds_total", "end_number_conditioner")):
        rules += [rename(f"{original}.embedder.embedding.0.weights", f"{ours}.time_positional_embedding.0.weights"),
                  rename(f"{original}.embedder.embedding.1.weight", f"{ours}.time_positional_embedding.1.weight"),
                  rename(f"{original}.embedder.embedding.1.bias", f"{ours}.time_positional_embedding.1.bias")]
    return rules


PROJECTION_MODEL = Component("diffusers", "StableAudioProjectionModel", projection_config,
                             lambda state, config: to_diffusers(state, projection_rules()),
                             lambda state, config: to_original(state, projection_rules()))


def check_text_width(profile, configs: dict, files: dict) -> None:
    """T5's width must be what the bundle's prompt projection reads (T5-base: 768)."""
    if files["text_encoder"] is None:  # no encoder (the prompt comes as CONDITIONING): nothing to pair
        return
    bundle = inspect_weights_file(files["diffusion_model"].path, "projection_model")
    wanted = projection_config(bundle)["text_encoder_dim"]
    width = configs["text_encoder"]["d_model"]
    if width != wanted:
        raise OmniInputError("text_encoder", files["text_encoder"].name, f"its width is {width}, but this "
                             f"Stable-Audio-Open checkpoint reads text features of width {wanted} (T5-base's)",
                             "choose t5_base.safetensors (ComfyUI's Stable Audio template) from models/text_encoders")


def check_bundle(profile, configs: dict, files: dict) -> None:
    """The checkpoint holds the conditioners the pipeline needs beside the DiT (a DiT saved alone does not)."""
    bundle = inspect_weights_file(files["diffusion_model"].path, "projection_model")
    if bundle.prefix != BUNDLE["projection_model"]:
        raise OmniInputError("diffusion_model", bundle.name, "it holds the Stable-Audio-Open DiT without the "
                             "seconds conditioners (conditioner.conditioners.*) the pipeline needs",
                             "choose the whole checkpoint, stable_audio_open_1.0.safetensors, from models/checkpoints")


def tokenizer_setup(input_name: str, tokenizer):
    """Stable-Audio-Open pads prompts to 128 T5 tokens (its tokenizer's model_max_length, and ComfyUI's
    min_length); ComfyUI's shared t5_tokenizer folder says 512. A shorter maximum (a tiny twin's) is kept."""
    if tokenizer.model_max_length > 128:
        tokenizer.model_max_length = 128
    return tokenizer


PROFILE = FilesProfile(
    family_key="stable-audio", pipeline_class="StableAudioPipeline",
    identifying_keys=(ROTARY, "timestep_features.weight", "to_global_embed.0.weight"),
    transformer=Component("diffusers", "StableAudioDiTModel", transformer_config, transformer_keys,
                          transformer_file_keys),
    vae=Component("diffusers", "AutoencoderOobleck", vae_config, vae_keys, vae_file_keys),
    text_encoder=text_encoders.T5_ENCODER, tokenizer_folder="t5_tokenizer", tokenizer_class="T5Tokenizer",
    encoder_kinds={"text_encoder": ("T5",)},
    pairings=(), pairing_checks=(check_bundle, check_text_width), tokenizer_setup=tokenizer_setup,
    bundled={"projection_model": PROJECTION_MODEL}, bundle=BUNDLE,
    scheduler_class="CosineDPMSolverMultistepScheduler", scheduler_config=SCHEDULER,
    file_names={"diffusion_model": "stable_audio_open_1.0.safetensors", "vae": "stable_audio_open_1.0.safetensors",
                "text_encoder": "t5_base.safetensors"},
)

PROFILES = (PROFILE,)
