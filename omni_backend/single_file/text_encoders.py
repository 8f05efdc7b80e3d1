"""The text encoders of ComfyUI's `text_encoders/` folder as transformers models: CLIP-L and CLIP-G
(`clip_l.safetensors`, `clip_g.safetensors`), T5-XXL (`t5xxl_fp16.safetensors`,
`t5xxl_fp8_e4m3fn_scaled.safetensors`) and Qwen3 (`qwen_3_4b.safetensors`).

The files keep the original Hugging Face checkpoints' names (`text_model.*`, `encoder.block.*`,
`model.layers.*`). transformers 5's classes differ only in prefixes (CLIPTextModel is the bare text
transformer, Qwen3Model the bare decoder), so the maps are prefix maps. Configs: the released model's,
with every size the shapes tell; what they cannot (CLIP's head count: 64-wide heads in both released
CLIPs; the tiny twins carry theirs in the file's `config` metadata) from the released config.
"""

from __future__ import annotations

from .profile import Component, with_file_config
from .weights_file import WeightsFile

_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
               projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)
_CLIP_G = {**_CLIP_L, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
           "num_attention_heads": 20, "hidden_act": "gelu", "projection_dim": 1280}
_T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
               layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
               tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
_QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
                 max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
                 rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}, attention_bias=False,
                 bos_token_id=151643, eos_token_id=151645)


def kind_of(file: WeightsFile) -> str:
    """What text encoder a file holds, from its tensor names and widths (for the loader's refusals)."""
    if file.has("text_model.embeddings.token_embedding.weight"):
        # The released widths tell L from G; other widths (the tiny twins) are just "CLIP".
        return {768: "CLIP-L", 1280: "CLIP-G"}.get(file.shape("text_model.embeddings.token_embedding.weight")[1], "CLIP")
    if file.has("shared.weight") or file.has("encoder.block.0.layer.0.SelfAttention.q.weight"):
        return "T5"
    if file.has("model.layers.0.self_attn.q_norm.weight"):
        return "Qwen3"
    if file.has("model.embed_tokens.weight"):
        return "Qwen2.5-VL" if any(key.startswith("visual.") for key in file.tensors) else "a Qwen/LLaMA-type LLM"
    return "no text encoder this pack knows"


def clip_config(file: WeightsFile) -> dict:
    vocab, hidden = file.shape("text_model.embeddings.token_embedding.weight")
    released = _CLIP_G if hidden == 1280 else _CLIP_L
    projection = file.shape("text_projection.weight")
    derived = dict(vocab_size=vocab, hidden_size=hidden, num_attention_heads=hidden // 64,
                   max_position_embeddings=file.shape("text_model.embeddings.position_embedding.weight")[0],
                   num_hidden_layers=file.count("text_model.encoder.layers", ".mlp.fc1.weight"),
                   intermediate_size=file.shape("text_model.encoder.layers.0.mlp.fc1.weight")[0],
                   projection_dim=projection[0] if projection else hidden)
    return with_file_config(file, {**released, **derived, "model_type": "clip_text_model"}, "text_encoder")


def _clip_bare(state_dict: dict, config: dict) -> dict:
    """ComfyUI's `text_model.*` -> CLIPTextModel (the bare text transformer in transformers 5). The
    projection some files carry is not part of CLIPTextModel (FLUX.1 reads the unprojected pooled output)."""
    return {key[len("text_model."):]: value for key, value in state_dict.items() if key.startswith("text_model.")}


def _clip_bare_file(state_dict: dict, config: dict) -> dict:
    return {"text_model." + key: value for key, value in state_dict.items()}


def _clip_with_projection(state_dict: dict, config: dict) -> dict:
    """ComfyUI's CLIP files as CLIPTextModelWithProjection: the text model and its projection; a bare
    `text_projection` (older files saved by ComfyUI's CLIPSave, [in, out]) is transposed as ComfyUI does
    (comfy/sd.py), and what the text model never uses (position_ids, logit_scale) is left out."""
    out = {key: value for key, value in state_dict.items()
           if (key.startswith("text_model.") and not key.endswith("position_ids")) or key == "text_projection.weight"}
    if "text_projection.weight" not in out and "text_projection" in state_dict:
        out["text_projection.weight"] = state_dict["text_projection"].transpose(0, 1)
    return out


def _clip_projection_config(file: WeightsFile) -> dict:
    config = clip_config(file)
    if file.shape("text_projection") and not file.shape("text_projection.weight"):
        config["projection_dim"] = file.shape("text_projection")[1]
    return config


CLIP_TEXT = Component("transformers", "CLIPTextModel", clip_config, _clip_bare, _clip_bare_file)
CLIP_TEXT_PROJECTION = Component("transformers", "CLIPTextModelWithProjection", _clip_projection_config,
                                 _clip_with_projection)


def t5_config(file: WeightsFile) -> dict:
    vocab, width = file.shape("shared.weight")
    heads = file.shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    gated = file.has("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
    derived = dict(vocab_size=vocab, d_model=width, num_layers=file.count("encoder.block", ".layer.0.SelfAttention.q.weight"),
                   num_heads=heads[1], relative_attention_num_buckets=heads[0],
                   d_kv=file.shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0] // heads[1],
                   d_ff=file.shape(f"encoder.block.0.layer.1.DenseReluDense.{'wi_0' if gated else 'wi'}.weight")[0],
                   feed_forward_proj="gated-gelu" if gated else "relu")
    return with_file_config(file, {**_T5_XXL, **derived, "model_type": "t5"}, "text_encoder")


# The encoder's token embedding is the shared one (tied); ComfyUI's files hold `shared.weight` only.
T5_ENCODER = Component("transformers", "T5EncoderModel", t5_config,
                       stand_ins={"encoder.embed_tokens.weight": "shared.weight"})


def qwen3_config(file: WeightsFile) -> dict:
    vocab, hidden = file.shape("model.embed_tokens.weight")
    head_dim = file.shape("model.layers.0.self_attn.q_norm.weight")[0]
    layers = file.count("model.layers", ".mlp.up_proj.weight")
    derived = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, head_dim=head_dim,
                   num_attention_heads=file.shape("model.layers.0.self_attn.q_proj.weight")[0] // head_dim,
                   num_key_value_heads=file.shape("model.layers.0.self_attn.k_proj.weight")[0] // head_dim,
                   intermediate_size=file.shape("model.layers.0.mlp.up_proj.weight")[0])
    config = with_file_config(file, {**_QWEN3_4B, **derived, "model_type": "qwen3"}, "text_encoder")
    config["layer_types"] = ["full_attention"] * config["num_hidden_layers"]
    return config


def _qwen3_bare(state_dict: dict, config: dict) -> dict:
    """ComfyUI's Qwen3 files hold the causal LM (`model.*`, maybe `lm_head`); Qwen3Model is `model.*`."""
    return {key[len("model."):]: value for key, value in state_dict.items() if key.startswith("model.")}


def _qwen3_bare_file(state_dict: dict, config: dict) -> dict:
    return {"model." + key: value for key, value in state_dict.items()}


QWEN3_MODEL = Component("transformers", "Qwen3Model", qwen3_config, _qwen3_bare, _qwen3_bare_file)
# FLUX.2-klein reads the causal LM's hidden states; ComfyUI's files leave out the (tied) output head.
QWEN3_CAUSAL_LM = Component("transformers", "Qwen3ForCausalLM", qwen3_config,
                            stand_ins={"lm_head.weight": "model.embed_tokens.weight"})

# Qwen3's chat template as it renders a prompt (the user turn, then the assistant turn with an empty
# think block when thinking is off): what ComfyUI's Z-Image and FLUX.2-klein encoders feed Qwen3
# (comfy/text_encoders/z_image.py, flux.py) and what the pipelines' apply_chat_template calls give with
# Qwen3's own tokenizer (Z-Image: enable_thinking=True, klein: False).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def qwen3_tokenizer_setup(input_name: str, tokenizer):
    """ComfyUI ships Qwen3's vocabulary as comfy/text_encoders/qwen25_tokenizer, whose chat template is
    Qwen2.5's: it adds a default system prompt the Qwen3 models never saw. That one is replaced by Qwen3's
    rendering; a tokenizer folder with its own template (beside the file) keeps it."""
    if not tokenizer.chat_template or "You are a helpful assistant" in tokenizer.chat_template:
        tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer
