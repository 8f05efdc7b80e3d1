"""Qwen-Image from ComfyUI's files: `diffusion_models/qwen_image_*.safetensors`,
`text_encoders/qwen_2.5_vl_7b*.safetensors`, `vae/qwen_image_vae.safetensors`."""

from __future__ import annotations

from ...single_file import wan_vae_keys
from ...single_file.profile import Component, FilesProfile, with_file_config
from ...single_file.weights_file import WeightsFile

# The released Qwen-Image's configs (its transformer/, vae/ and text_encoder/ config.json, scheduler/).
TRANSFORMER = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                   num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                   axes_dims_rope=[16, 56, 56])
VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
           temperal_downsample=[False, True, True], dropout=0.0)  # latents_mean/std: the class defaults
TEXT_ENCODER = dict(
    model_type="qwen2_5_vl", image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
    vision_end_token_id=151653, tie_word_embeddings=False,
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                     max_position_embeddings=128000,
                     rope_parameters={"type": "mrope", "mrope_section": [16, 24, 24], "rope_type": "default",
                                      "rope_theta": 1000000.0}),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       tokens_per_second=2, fullatt_block_indexes=[7, 15, 23, 31]),
)
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
                 num_train_timesteps=1000, shift=1.0, shift_terminal=0.02, time_shift_type="exponential",
                 use_dynamic_shifting=True)


def transformer_config(file: WeightsFile) -> dict:
    """Shapes decide the block count, widths and channels (Qwen-Image-2512 and fine-tunes share them)."""
    head_dim = file.shape("transformer_blocks.0.attn.norm_q.weight")[0]
    inner, in_channels = file.shape("img_in.weight")
    patch = TRANSFORMER["patch_size"]
    derived = dict(num_layers=file.count("transformer_blocks", ".img_mod.1.weight"), attention_head_dim=head_dim,
                   num_attention_heads=inner // head_dim, in_channels=in_channels,
                   out_channels=file.shape("proj_out.weight")[0] // (patch * patch),
                   joint_attention_dim=file.shape("txt_in.weight")[1])
    return with_file_config(file, {**TRANSFORMER, **derived}, "diffusion_model")


def vae_config(file: WeightsFile) -> dict:
    derived = dict(base_dim=file.shape("encoder.conv1.weight")[0], z_dim=file.shape("conv1.weight")[0] // 2,
                   num_res_blocks=wan_vae_keys.num_res_blocks_of_original(file.tensors))
    return with_file_config(file, {**VAE, **derived}, "vae")


def vae_keys(state_dict: dict, config: dict) -> dict:
    return {wan_vae_keys.to_diffusers(key, config["num_res_blocks"]): value for key, value in state_dict.items()}


def vae_file_keys(state_dict: dict, config: dict) -> dict:
    return {wan_vae_keys.to_original(key, config["num_res_blocks"]): value for key, value in state_dict.items()}


def text_encoder_config(file: WeightsFile) -> dict:
    text = dict(TEXT_ENCODER["text_config"])
    vocab, hidden = file.shape("model.embed_tokens.weight")
    text.update(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=file.count("model.layers", ".mlp.up_proj.weight"),
                intermediate_size=file.shape("model.layers.0.mlp.up_proj.weight")[0])
    config = {**TEXT_ENCODER, "text_config": text}
    carried = with_file_config(file, {}, "text_encoder")
    for part in ("text_config", "vision_config"):
        config[part] = {**config[part], **carried.pop(part, {})}
    return {**config, **carried}


# ComfyUI's Qwen2.5-VL files keep the original release's names (`model.layers.*`, `visual.*`);
# transformers 5 renames them the same way when it loads such a checkpoint (conversion_mapping.py).
def text_encoder_keys(state_dict: dict, config: dict) -> dict:
    def rename(key: str) -> str:
        if key.startswith("visual."):
            return "model." + key
        if key.startswith("model."):
            return "model.language_model." + key[len("model."):]
        return key
    return {rename(key): value for key, value in state_dict.items()}


def text_encoder_file_keys(state_dict: dict, config: dict) -> dict:
    def rename(key: str) -> str:
        if key.startswith("model.visual."):
            return key[len("model."):]
        if key.startswith("model.language_model."):
            return "model." + key[len("model.language_model."):]
        return key
    return {rename(key): value for key, value in state_dict.items()}


PROFILE = FilesProfile(
    family_key="qwen-image", pipeline_class="QwenImagePipeline",
    identifying_keys=("transformer_blocks.0.img_mod.1.weight", "txt_norm.weight", "img_in.weight"),
    transformer=Component("diffusers", "QwenImageTransformer2DModel", transformer_config),
    vae=Component("diffusers", "AutoencoderKLQwenImage", vae_config, vae_keys, vae_file_keys),
    text_encoder=Component("transformers", "Qwen2_5_VLForConditionalGeneration", text_encoder_config,
                           text_encoder_keys, text_encoder_file_keys,
                           # The pipeline reads hidden states only, and ComfyUI's files have no lm_head.
                           stand_ins={"lm_head.weight": "model.language_model.embed_tokens.weight"}),
    tokenizer_folder="qwen25_tokenizer", tokenizer_class="Qwen2Tokenizer",
    scheduler_class="FlowMatchEulerDiscreteScheduler", scheduler_config=SCHEDULER,
    file_names={"diffusion_model": "qwen_image_{weights}.safetensors",
                "text_encoder": "qwen_2.5_vl_7b{te_suffix}.safetensors", "vae": "qwen_image_vae.safetensors"},
)

PROFILES = (PROFILE,)
