"""Z-Image-Turbo from ComfyUI's files: `diffusion_models/z_image_turbo_bf16.safetensors`,
`text_encoders/qwen_3_4b.safetensors`, `vae/ae.safetensors` (FLUX.1's VAE).

The DiT file keeps Tongyi's original layout (fused `attention.qkv`, `x_embedder`, `final_layer`); diffusers'
own converter reads it (`convert_z_image_transformer_checkpoint_to_diffusers`). diffusers has none back:
`transformer_file_keys` inverts its renames and splits, and make-tiny checks every written DiT reads back
through diffusers' converter to the same tensors (comfy_layout.check_round_trip).
"""

from __future__ import annotations

from ...single_file import ldm_vae, text_encoders
from ..flux import single_file as flux
from ...single_file.fused_keys import Rule, to_original
from ...single_file.profile import Component, FilesProfile, with_file_config
from ...single_file.weights_file import WeightsFile

# The released Z-Image-Turbo's transformer/config.json and scheduler.
TRANSFORMER = dict(all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=3840, n_layers=30,
                   n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560,
                   rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
def transformer_config(file: WeightsFile) -> dict:
    dim, patch_inputs = file.shape("x_embedder.weight")
    head_dim = file.shape("layers.0.attention.q_norm.weight")[0]
    patch, f_patch = TRANSFORMER["all_patch_size"][0], TRANSFORMER["all_f_patch_size"][0]
    derived = dict(dim=dim, n_heads=dim // head_dim, n_kv_heads=dim // head_dim,
                   in_channels=patch_inputs // (patch * patch * f_patch),
                   n_layers=file.count("layers", ".attention.qkv.weight"),
                   n_refiner_layers=file.count("noise_refiner", ".attention.qkv.weight"),
                   cap_feat_dim=file.shape("cap_embedder.1.weight")[1])
    return with_file_config(file, {**TRANSFORMER, **derived}, "diffusion_model")


def transformer_keys(state_dict: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    return convert_z_image_transformer_checkpoint_to_diffusers(dict(state_dict))


def transformer_file_keys(state_dict: dict, config: dict) -> dict:
    patch = f"{config['all_patch_size'][0]}-{config['all_f_patch_size'][0]}."
    attention = sorted({key[:-len("to_q.weight")] for key in state_dict if key.endswith(".attention.to_q.weight")})
    fused = to_original(state_dict, [Rule(prefix + "qkv.weight", tuple(prefix + f"to_{x}.weight" for x in "qkv"))
                                     for prefix in attention])
    renames = ((f"all_final_layer.{patch}", "final_layer."), (f"all_x_embedder.{patch}", "x_embedder."),
               (".attention.to_out.0.", ".attention.out."), (".attention.norm_q.", ".attention.q_norm."),
               (".attention.norm_k.", ".attention.k_norm."))
    out = {}
    for key, value in fused.items():
        for new, old in renames:
            key = key.replace(new, old)
        out[key] = value
    return out


PROFILE = FilesProfile(
    family_key="z-image", pipeline_class="ZImagePipeline",
    identifying_keys=("cap_pad_token", "x_pad_token", "noise_refiner.0.attention.qkv.weight"),
    transformer=Component("diffusers", "ZImageTransformer2DModel", transformer_config, transformer_keys,
                          transformer_file_keys),
    vae=Component("diffusers", "AutoencoderKL", lambda file: ldm_vae.config(file, flux.VAE), ldm_vae.keys,
                  ldm_vae.to_file_keys),
    text_encoder=text_encoders.QWEN3_MODEL, tokenizer_folder="qwen25_tokenizer", tokenizer_class="Qwen2Tokenizer",
    encoder_kinds={"text_encoder": ("Qwen3",)},
    pairings=(("text_encoder", "hidden_size", "cap_feat_dim"),),
    tokenizer_setup=text_encoders.qwen3_tokenizer_setup,
    scheduler_class="FlowMatchEulerDiscreteScheduler", scheduler_config=SCHEDULER,
    file_names={"diffusion_model": "z_image_turbo_{weights}.safetensors",
                "text_encoder": "qwen_3_4b{te_suffix}.safetensors", "vae": "ae.safetensors"},
)

PROFILES = (PROFILE,)
