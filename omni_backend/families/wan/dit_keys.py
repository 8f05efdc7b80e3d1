"""Key names of the Wan DiT between the original release's layout (ComfyUI's diffusion_models/ files)
and diffusers' WanTransformer3DModel.

Reading uses diffusers' own converter (`convert_wan_transformer_to_diffusers`, a table of substring
renames applied in order). Writing (the tiny twins of `make-tiny --layout comfy`) needs the inverse,
which diffusers does not have: the table below undoes those renames in reverse order, and every key it
produces is run through diffusers' converter again and must come back unchanged, so a change of
diffusers' table fails loudly instead of writing files that ComfyUI or diffusers would misread.
"""

from __future__ import annotations

# diffusers' renames (original -> diffusers) for the Wan2.2 models, reversed: applied in this order,
# each undoes one step of convert_wan_transformer_to_diffusers (VACE/Animate entries left out: not ours).
_UNDO = (
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    # diffusers swaps the original's norm2 (cross-attention) and norm3 (feed-forward) names.
    ("norm3", "norm__placeholder"), ("norm2", "norm3"), ("norm__placeholder", "norm2"),
    ("ffn.net.2", "ffn.2"), ("ffn.net.0.proj", "ffn.0"),
    ("scale_shift_table", "modulation"),  # blocks.N.modulation; the top-level one is head.modulation
    ("proj_out", "head.head"),
    (".norm_added_k.", ".norm_k_img."), (".add_v_proj.", ".v_img."), (".add_k_proj.", ".k_img."),
    (".to_v.", ".v."), (".to_k.", ".k."), (".to_q.", ".q."), (".to_out.0.", ".o."),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
)


def to_diffusers(state_dict: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state_dict))  # it pops from what it is given


def original_name(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    for new, old in _UNDO:
        key = key.replace(new, old)
    return key


def to_original(state_dict: dict) -> dict:
    names = {key: original_name(key) for key in state_dict}
    back = to_diffusers({original: key for key, original in names.items()})
    wrong = [(key, converted) for converted, key in back.items() if converted != key]
    if wrong or len(back) != len(names):
        raise RuntimeError(f"the Wan DiT key map no longer inverts diffusers' converter (e.g. {wrong[:2]}); "
                           "update wan_dit_keys._UNDO from convert_wan_transformer_to_diffusers")
    return {names[key]: value for key, value in state_dict.items()}
