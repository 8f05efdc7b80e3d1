"""Tiny random-weight components shared by several families' test models.

Head counts are 4 so that parallel degree 2 divides them; VAEs downsample by 8 like the real ones.
"""

from __future__ import annotations


def autoencoder_kl(scaling_factor: float, shift_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 16, 16], layers_per_block=1,
        latent_channels=16, norm_num_groups=8, scaling_factor=scaling_factor, shift_factor=shift_factor,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def clip_text_encoder(with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        projection_dim=32, eos_token_id=1, bos_token_id=0, pad_token_id=1, max_position_embeddings=77,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config).eval()


def t5_text_encoder(umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(d_model=32, d_kv=8, d_ff=37, num_heads=4, num_layers=2, vocab_size=256,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    # A fresh T5 is in train mode (dropout); from_pretrained returns eval mode. Match it.
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()


def qwen3_config(layers: int = 2):
    from transformers import Qwen3Config

    return Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, vocab_size=1024)
