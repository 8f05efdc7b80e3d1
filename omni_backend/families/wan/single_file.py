"""Wan2.2 from ComfyUI's files: T2V A14B and I2V A14B (two expert DiTs each, the Wan 2.1 VAE) and TI2V 5B
(one DiT, the Wan2.2 VAE), all with the UMT5-XXL text encoder whose file carries its tokenizer.

    diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors  -> transformer   (diffusion_model)
    diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors   -> transformer_2 (diffusion_model_2)
    diffusion_models/wan2.2_i2v_{high,low}_noise_14B_fp8_scaled.safetensors, wan2.2_ti2v_5B_fp16.safetensors
    text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors (or umt5_xxl_fp16.safetensors)
    vae/wan_2.1_vae.safetensors (A14B), vae/wan2.2_vae.safetensors (TI2V 5B)

The three DiTs share one architecture and one key layout (the original release's, as ComfyUI keeps it);
their input channels tell them apart, as ComfyUI's own detection does (comfy/model_detection.py reads
`patch_embedding.weight`): 16 latent channels for T2V, 16 + 4 mask + 16 image for I2V, 48 for TI2V.
"""

from __future__ import annotations

from ...single_file import umt5, wan_vae_keys
from . import dit_keys as wan_dit_keys
from ...single_file.profile import Component, FilesProfile, with_file_config
from ...single_file.weights_file import WeightsFile
from ...errors import OmniInputError

# The released diffusers folders' transformer/config.json (Wan-AI/Wan2.2-{T2V,I2V}-A14B-Diffusers,
# Wan2.2-TI2V-5B-Diffusers): the shapes replace every value they decide; the head width (128, also
# what ComfyUI assumes: num_heads = dim // 128) and the rest come from here or the file's metadata.
TRANSFORMER = dict(patch_size=[1, 2, 2], attention_head_dim=128, cross_attn_norm=True, eps=1e-6,
                   qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, image_dim=None, added_kv_proj_dim=None,
                   pos_embed_seq_len=None)
IN_CHANNELS = {"wan2.2": 16, "wan2.2-i2v": 36, "wan2.2-ti2v": 48}

# The Wan 2.1 VAE (A14B) is AutoencoderKLWan's defaults; the Wan2.2 VAE's config is the released
# Wan2.2-TI2V-5B-Diffusers vae/config.json (diffusers' scripts/convert_wan_to_diffusers.py, vae22).
VAE_21: dict = {}
VAE_22 = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
    scale_factor_temporal=4, scale_factor_spatial=16, patch_size=2,
    latents_mean=[-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
                  0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
                  -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
                  -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
                  0.3573, -0.0548, -0.1681, -0.0667],
    latents_std=[0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
                 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
                 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744],
)


def _scheduler(flow_shift: float) -> dict:
    """The released folders' scheduler: UniPC on flow sigmas, shift 3 for A14B and 5 for TI2V 5B
    (diffusers' scripts/convert_wan_to_diffusers.py, which wrote those folders)."""
    return dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                flow_shift=flow_shift)


def in_channels(file: WeightsFile) -> int:
    return file.shape("patch_embedding.weight")[1]


def transformer_config(file: WeightsFile) -> dict:
    width, channels, *patch = file.shape("patch_embedding.weight")
    derived = dict(in_channels=channels, patch_size=patch, num_layers=file.count("blocks", ".ffn.0.weight"),
                   out_channels=file.shape("head.head.weight")[0] // (patch[0] * patch[1] * patch[2]),
                   ffn_dim=file.shape("blocks.0.ffn.0.weight")[0], text_dim=file.shape("text_embedding.0.weight")[1],
                   freq_dim=file.shape("time_embedding.0.weight")[1],
                   num_attention_heads=width // TRANSFORMER["attention_head_dim"])
    config = with_file_config(file, {**TRANSFORMER, **derived}, "diffusion_model")
    if config["num_attention_heads"] * config["attention_head_dim"] != width:
        raise ValueError(f"width {width} is not heads x head width {config['attention_head_dim']}")
    return config


def transformer_keys(state_dict: dict, config: dict) -> dict:
    return wan_dit_keys.to_diffusers(state_dict)


def transformer_file_keys(state_dict: dict, config: dict) -> dict:
    return wan_dit_keys.to_original(state_dict)


def vae_config(file: WeightsFile) -> dict:
    """The Wan2.2 VAE (nested blocks, 48 latent channels) or the Wan 2.1 one, by its key layout."""
    base = dict(base_dim=file.shape("encoder.conv1.weight")[0], z_dim=file.shape("conv1.weight")[0] // 2)
    if wan_vae_keys.is_wan22_layout(file.tensors):
        base.update(VAE_22, base_dim=base["base_dim"], z_dim=base["z_dim"],
                    num_res_blocks=wan_vae_keys.num_res_blocks_of_original_22(file.tensors))
    else:
        base.update(VAE_21, num_res_blocks=wan_vae_keys.num_res_blocks_of_original(file.tensors))
    return with_file_config(file, base, "vae")


def vae_keys(state_dict: dict, config: dict) -> dict:
    convert = wan_vae_keys.to_diffusers_22 if config.get("is_residual") else wan_vae_keys.to_diffusers
    return {convert(key, config["num_res_blocks"]): value for key, value in state_dict.items()}


def vae_file_keys(state_dict: dict, config: dict) -> dict:
    convert = wan_vae_keys.to_original_22 if config.get("is_residual") else wan_vae_keys.to_original
    return {convert(key, config["num_res_blocks"]): value for key, value in state_dict.items()}


def check_vae_fits(profile: FilesProfile, configs: dict, files: dict) -> None:
    """A14B decodes 16-channel latents with the Wan 2.1 VAE, TI2V 5B 48-channel ones with the Wan2.2 VAE;
    the other one would fail inside the first decode, after the whole sampling."""
    latent, wanted = configs["vae"].get("z_dim", 16), configs["transformer"]["out_channels"]
    if latent != wanted:
        right = "wan2.2_vae.safetensors" if wanted == 48 else "wan_2.1_vae.safetensors"
        raise OmniInputError("vae", files["vae"].name, f"it makes {latent}-channel latents, but this "
                             f"{profile.family_key} diffusion model works on {wanted} channels",
                             f"choose {right} (models/vae)")


def _describe(file: WeightsFile) -> str:
    channels = in_channels(file)
    family = {value: key for key, value in IN_CHANNELS.items()}.get(channels)
    return f"a Wan DiT with {channels} input channels" + (f" (family {family})" if family else "")


def _profile(family_key: str, pipeline_class: str, dit_file: str, vae_file: str, flow_shift: float, *,
             second_expert: bool, pipeline_kwargs: dict) -> FilesProfile:
    channels = IN_CHANNELS[family_key]
    names = {"diffusion_model": dit_file, "text_encoder": "umt5_xxl_{te_weights}.safetensors", "vae": vae_file}
    if second_expert:
        names["diffusion_model"] = dit_file.format(expert="high_noise", weights="{weights}")
        names["diffusion_model_2"] = dit_file.format(expert="low_noise", weights="{weights}")
    return FilesProfile(
        family_key=family_key, pipeline_class=pipeline_class,
        identifying_keys=("patch_embedding.weight", "head.modulation", "blocks.0.ffn.0.weight"),
        claims=lambda file: in_channels(file) == channels, describe=_describe,
        transformer=Component("diffusers", "WanTransformer3DModel", transformer_config, transformer_keys,
                              transformer_file_keys),
        vae=Component("diffusers", "AutoencoderKLWan", vae_config, vae_keys, vae_file_keys),
        text_encoder=Component("transformers", "UMT5EncoderModel", umt5.config, umt5.keys,
                               stand_ins=umt5.STAND_INS),
        tokenizer_folder="", tokenizer_class="T5Tokenizer", tokenizer_tensor=umt5.TOKENIZER_TENSOR,
        scheduler_class="UniPCMultistepScheduler", scheduler_config=_scheduler(flow_shift),
        file_names=names, second_expert=second_expert, pipeline_kwargs=pipeline_kwargs,
        pairings=(("text_encoder", "d_model", "text_dim"),), pairing_checks=(check_vae_fits,),
    )


# boundary_ratio: the released model_index.json's (T2V 0.875, I2V 0.9; diffusers' conversion script):
# the high-noise expert runs while the timestep is at or above ratio x 1000, the low-noise one after.
T2V = _profile("wan2.2", "WanPipeline", "wan2.2_t2v_{expert}_14B_{weights}.safetensors", "wan_2.1_vae.safetensors",
               3.0, second_expert=True, pipeline_kwargs=dict(boundary_ratio=0.875))
I2V = _profile("wan2.2-i2v", "WanImageToVideoPipeline", "wan2.2_i2v_{expert}_14B_{weights}.safetensors",
               "wan_2.1_vae.safetensors", 3.0, second_expert=True,
               pipeline_kwargs=dict(boundary_ratio=0.9, image_encoder=None, image_processor=None))
TI2V = _profile("wan2.2-ti2v", "WanPipeline", "wan2.2_ti2v_5B_{weights}.safetensors", "wan2.2_vae.safetensors",
                5.0, second_expert=False,
                pipeline_kwargs=dict(transformer_2=None, boundary_ratio=None, expand_timesteps=True))
PROFILES = (T2V, I2V, TI2V)
