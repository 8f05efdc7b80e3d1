"""What LongCat-Image and Ovis-Image share with FLUX.1's transformer layout, which diffusers does not
declare for them: double-stream `transformer_blocks` then single-stream `single_transformer_blocks`,
both returning `(encoder_hidden_states, hidden_states)`; text and image tokens joined in each
attention; rotary ids for text (`txt_ids`) and image (`img_ids`) as 2-D [seq, 3] tensors.

diffusers 0.42.1 gives neither transformer a `_cp_plan` or `_tp_plan` and does not list their blocks
in its TransformerBlockRegistry (where our cache hooks read a block's output layout), so these are
written here, in diffusers' own formats, from the same structure as `FluxTransformer2DModel`'s.
"""

from __future__ import annotations

from ..blocks.block_io import block_arguments

# The double- and single-stream block lists, in execution order.
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def block_lists(transformer):
    register_block_layouts(transformer)
    return [(name, getattr(transformer, name)) for name in BLOCK_LISTS]


def register_block_layouts(transformer) -> None:
    """Tell diffusers' TransformerBlockRegistry that both block kinds return (encoder, hidden), as
    FLUX's do; idempotent. Asked from `block_lists`, which every block-level feature calls first."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    for name in BLOCK_LISTS:
        blocks = getattr(transformer, name)
        if not len(blocks):
            continue
        block_class = type(blocks[0])
        TransformerBlockRegistry._register()
        if block_class not in TransformerBlockRegistry._registry:
            TransformerBlockRegistry.register(block_class, TransformerBlockMetadata(
                return_hidden_states_index=1, return_encoder_hidden_states_index=0))


def sequence_parallel_plan() -> dict:
    """Split the image and text streams and their rotary ids where they enter the transformer (the
    joint attention concatenates each rank's text and image shards; sp_attention all-to-alls them);
    gather the image stream after the final projection. FLUX.1's diffusers plan, for the same forward."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "img_ids": ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
            "txt_ids": ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def tensor_parallel_plan(mlp_ratio: int) -> dict:
    """Heads and MLP features sharded; AdaLN modulation, QK norms and the output projection stay
    replicated (as in FLUX.1's plan). The single-stream `proj_out` reads cat([attention output, MLP
    output]): its input columns are two blocks (1 : mlp_ratio), each cut on its own to match the
    column-sharded streams feeding it."""
    from diffusers.hooks.tensor_parallel import PackedRowwiseParallel

    plan = {}
    for projection in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
        plan[f"transformer_blocks.*.attn.{projection}"] = "colwise"
    plan["transformer_blocks.*.attn.to_out.0"] = "rowwise"
    plan["transformer_blocks.*.attn.to_add_out"] = "rowwise"
    for stream in ("ff", "ff_context"):
        plan[f"transformer_blocks.*.{stream}.net.0.proj"] = "colwise"
        plan[f"transformer_blocks.*.{stream}.net.2"] = "rowwise"
    for projection in ("to_q", "to_k", "to_v"):
        plan[f"single_transformer_blocks.*.attn.{projection}"] = "colwise"
    plan["single_transformer_blocks.*.proj_mlp"] = "colwise"
    plan["single_transformer_blocks.*.proj_out"] = PackedRowwiseParallel(blocks=[1, mlp_ratio])
    return plan


def tensor_parallel_widths(transformer_config: dict, mlp_ratio: int) -> dict[str, int]:
    heads = int(transformer_config["num_attention_heads"])
    inner = heads * int(transformer_config["attention_head_dim"])
    return {"attention heads": heads, "MLP width": inner * mlp_ratio}


def block_counts(transformer_config: dict) -> list[int]:
    return [int(transformer_config["num_layers"]), int(transformer_config["num_single_layers"])]


def teacache_modulated_input(block, args, kwargs):
    """The first double-stream block's AdaLN-modulated image stream (FLUX.1's TeaCache input)."""
    arguments = block_arguments(block, args, kwargs)
    modulated, *_gates = block.norm1(arguments["hidden_states"], emb=arguments["temb"])
    return modulated


def raw_vae_latents(pipe, latents, width: int, height: int):
    """FLUX.1-style packed, scaled-and-shifted latents -> raw VAE latents (ComfyUI's layout)."""
    unpacked = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    config = pipe.vae.config
    return unpacked / config.scaling_factor + config.shift_factor
