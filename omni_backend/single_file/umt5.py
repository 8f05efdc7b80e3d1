"""UMT5-XXL (Wan's text encoder) from ComfyUI's `text_encoders/umt5_xxl_*.safetensors`.

ComfyUI's file is the encoder half of google/umt5-xxl under transformers' own names
(`shared.weight`, `encoder.block.N.layer.0.SelfAttention.q.weight`, ...; comfy/text_encoders/t5.py
mirrors them), plus a `spiece_model` tensor: the sentencepiece tokenizer's serialized model as bytes
(comfy/text_encoders/wan.py, UMT5XXlTokenizer.state_dict). So the file alone is the text encoder and
its tokenizer. transformers builds its T5Tokenizer from such a sentencepiece model with its own
converter (sentencepiece + protobuf), the same path a diffusers folder's `spiece.model` takes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .profile import with_file_config
from .weights_file import WeightsFile

TOKENIZER_TENSOR = "spiece_model"
# google/umt5-xxl's config.json (the encoder's part); the shapes below replace what they decide.
UMT5_XXL = dict(model_type="umt5", vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
                tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
_ATTENTION = "encoder.block.0.layer.0.SelfAttention"


def config(file: WeightsFile) -> dict:
    vocab, width = file.shape("shared.weight")
    buckets, heads = file.shape(f"{_ATTENTION}.relative_attention_bias.weight")
    derived = dict(vocab_size=vocab, d_model=width, num_heads=heads, relative_attention_num_buckets=buckets,
                   d_kv=file.shape(f"{_ATTENTION}.q.weight")[0] // heads,
                   d_ff=file.shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0],
                   num_layers=file.count("encoder.block", ".layer.0.SelfAttention.q.weight"))
    return with_file_config(file, {**UMT5_XXL, **derived}, "text_encoder")


def keys(state_dict: dict, config: dict) -> dict:
    """transformers' names already; the tokenizer's bytes are not a weight."""
    return {key: value for key, value in state_dict.items() if key != TOKENIZER_TENSOR}


# The encoder reads its embeddings through encoder.embed_tokens, the same module as `shared`.
STAND_INS = {"encoder.embed_tokens.weight": "shared.weight"}


def tokenizer_from_file(file: WeightsFile):
    """transformers' T5Tokenizer from the sentencepiece model the file carries."""
    from safetensors import safe_open
    from transformers import T5Tokenizer

    with safe_open(file.path, framework="pt", device="cpu") as handle:
        model = handle.get_tensor(file.prefix + TOKENIZER_TENSOR).numpy().tobytes()
    with tempfile.TemporaryDirectory() as folder:  # transformers converts from a file; it reads it whole
        (Path(folder) / "spiece.model").write_bytes(model)
        # No <extra_id_N> sentinels: ComfyUI's tokenizer has none either (they are for span-corruption
        # training). 512 tokens: what Wan's pipeline pads and cuts prompts to.
        return T5Tokenizer.from_pretrained(folder, extra_ids=0, model_max_length=512, local_files_only=True)


def tokenizer_tensor(tokenizer):
    """The inverse, for the tiny twins: a Unigram tokenizer's pieces and scores as a sentencepiece model
    (what ComfyUI's files carry), as the uint8 tensor ComfyUI stores. Special pieces keep their ids."""
    import torch
    from sentencepiece import sentencepiece_model_pb2 as spm

    state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if state["type"] != "Unigram":
        raise ValueError(f"a sentencepiece model holds a Unigram tokenizer, not {state['type']}")
    piece_type = spm.ModelProto.SentencePiece
    special = {str(tokenizer.pad_token): piece_type.CONTROL, str(tokenizer.eos_token): piece_type.CONTROL,
               str(tokenizer.unk_token): piece_type.UNKNOWN}
    model = spm.ModelProto()
    for text, score in state["vocab"]:
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = text, score, special.get(text, piece_type.NORMAL)
    spec = model.trainer_spec
    spec.model_type = spm.TrainerSpec.UNIGRAM
    spec.unk_id, spec.eos_id, spec.pad_id, spec.bos_id = (tokenizer.unk_token_id, tokenizer.eos_token_id,
                                                         tokenizer.pad_token_id, -1)
    model.normalizer_spec.name = "identity"  # the tiny tokenizers have no normalizer (real ones: nmt_nfkc)
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    return torch.frombuffer(bytearray(model.SerializeToString()), dtype=torch.uint8).clone()
