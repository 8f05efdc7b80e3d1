"""What loading one family from single files needs: how to recognise its DiT, its components' configs
and key maps, the tokenizer folder and the scheduler a diffusers folder would have brought.

Configs: a profile starts from the released model's config, takes every value the tensors' shapes
decide (block counts, widths, channels), and lets a `config` entry in the file's safetensors metadata
override the rest (the convention ComfyUI itself reads for LTX-Video files; the tiny twins of
`make-tiny --layout comfy` carry their configs that way, since shapes cannot tell e.g. rotary axes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from ..errors import OmniInputError
from .weights_file import WeightsFile


@dataclass(frozen=True)
class Component:
    """One model component read from a single file."""

    library: str  # "diffusers" or "transformers"
    class_name: str
    config: Callable[[WeightsFile], dict]  # the component's config, from the released one + the file
    keys: Callable[[dict, dict], dict] = lambda state_dict, config: state_dict  # file keys -> class keys
    to_file_keys: Callable[[dict, dict], dict] = lambda state_dict, config: state_dict  # the inverse
    # Parameters a file may leave out, and the parameter of the same shape that stands in for them
    # (an output head the pipeline never calls shares the input embedding's storage).
    stand_ins: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FilesProfile:
    family_key: str
    pipeline_class: str
    identifying_keys: tuple[str, ...]  # DiT keys (prefix-free) that tell this family's DiT apart
    transformer: Component
    vae: Component
    text_encoder: Component
    tokenizer_folder: str  # the folder name ComfyUI ships it under, comfy/text_encoders/<name>
    tokenizer_class: str
    scheduler_class: str
    scheduler_config: dict | Callable = field(hash=False)  # or a function of the DiT's config
    # ComfyUI's template file names, by weights format (what make-tiny writes and workflows name).
    file_names: dict = field(hash=False, default_factory=dict)
    # Several families share one DiT architecture (Wan2.2 T2V / I2V / TI2V): this tells from the DiT's
    # header whether the file is this family's (e.g. by its input channels); None = the keys suffice.
    claims: Callable[[WeightsFile], bool] | None = None
    # Profiles whose files this one's keys or `claims` set apart (a file matching both is this one's), so a
    # new family refining an older one changes nothing in the older one's profile.
    refines: tuple[str, ...] = ()
    # Whether "auto" may choose it; False where the files cannot tell it from another family's.
    auto_detect: bool = True
    # What the DiT file is when `claims` says no (for the error that names the right family).
    describe: Callable[[WeightsFile], str] | None = None
    # Wan2.2 A14B: two expert DiTs, the second (low-noise) one from the diffusion_model_2 input.
    second_expert: bool = False
    # The tensor of the text encoder file that holds the tokenizer (ComfyUI's UMT5 files carry their
    # sentencepiece model as `spiece_model` bytes); "" = a tokenizer folder (tokenizer_folder).
    tokenizer_tensor: str = ""
    # Checks of the files against each other beyond the text width (e.g. VAE latent channels vs DiT).
    pairing_checks: tuple = ()
    # The pipeline's processor (Qwen-Image-Edit's image + text), from the tokenizer and its folder.
    processor: Callable | None = None
    processor_name: str = "processor"  # its pipeline component name (LongCat's pipelines: text_processor)

    def matches(self, file: WeightsFile) -> bool:
        """This family's DiT: its identifying tensors are there and (where families share them) its shapes fit."""
        return file.has(*self.identifying_keys) and (self.claims is None or self.claims(file))
    # Families with more text encoders (FLUX.1: CLIP-L + T5; SD3.5: CLIP-L, CLIP-G, T5): the
    # pipeline's text_encoder_2 / _3 and their tokenizers, read from the node's inputs of those names.
    text_encoder_2: Component | None = None
    tokenizer_2_folder: str = ""
    tokenizer_2_class: str = ""
    text_encoder_3: Component | None = None
    tokenizer_3_folder: str = ""
    tokenizer_3_class: str = ""
    # What each text encoder input must hold (text_encoders.kind_of), checked before any weight loads.
    encoder_kinds: dict = field(hash=False, default_factory=dict)
    # (encoder input(s), its config's width field, the DiT config field that must equal it[, how many
    # of the encoder's layers the pipeline stacks]); several inputs: their widths side by side.
    pairings: tuple = (("text_encoder", "hidden_size", "joint_attention_dim"),)
    # Adjusts a loaded tokenizer to what the pipeline expects (input name, tokenizer) -> tokenizer.
    tokenizer_setup: Callable | None = field(default=None, hash=False)
    # Pipeline arguments a diffusers folder's model_index.json would hold (Wan's boundary_ratio): a dict,
    # or a function of the files (ModelFiles) where the files decide them (FLUX.2-klein's distillation).
    pipeline_kwargs: dict | Callable = field(default_factory=dict, hash=False)
    # Pipeline components read from the diffusion model's file beside the DiT, when that file is a bundle
    # (Stable-Audio-Open's projection model: its seconds conditioners), by pipeline component name; each
    # is found under its weights_file.BUNDLE_PREFIXES entry.
    bundled: dict = field(default_factory=dict, hash=False)
    # The parts one checkpoints/ file holds, by input or component name -> key prefix (what make-tiny
    # writes as a bundle; the reader finds the parts by weights_file.BUNDLE_PREFIXES).
    bundle: dict = field(default_factory=dict, hash=False)

    def encoder_slots(self) -> list[tuple[str, Component, str, str]]:
        """(input and pipeline component name, component, tokenizer folder, tokenizer class) per encoder."""
        slots = [("text_encoder", self.text_encoder, self.tokenizer_folder, self.tokenizer_class)]
        for index in (2, 3):
            component = getattr(self, f"text_encoder_{index}")
            if component is not None:
                slots.append((f"text_encoder_{index}", component, getattr(self, f"tokenizer_{index}_folder"),
                              getattr(self, f"tokenizer_{index}_class")))
        return slots

    def template_names(self, weights: str) -> dict[str, str]:
        """ComfyUI's template file names in that weight format, by input name. FP8 templates pair the FP8
        DiT with the encoders ComfyUI ships fp8_scaled (Qwen2.5-VL, T5-XXL)."""
        fp8 = weights.startswith("fp8")
        suffixes = dict(weights=weights, te_suffix="_fp8_scaled" if fp8 else "", dit_suffix="-fp8" if fp8 else "",
                        t5_suffix="_fp8_e4m3fn_scaled" if fp8 else "_fp16",
                        te_weights="fp8_e4m3fn_scaled" if fp8 else weights)
        return {key: pattern.format(**suffixes) for key, pattern in self.file_names.items()}

    def pipeline_arguments(self, files) -> dict:
        chosen = self.pipeline_kwargs
        return dict(chosen(files) if callable(chosen) else chosen)

    def scheduler_for(self, transformer_config: dict) -> dict:
        """The scheduler config (a profile may choose it from the DiT, e.g. FLUX.1-dev vs schnell)."""
        chosen = self.scheduler_config
        return chosen(transformer_config) if callable(chosen) else chosen


def with_file_config(file: WeightsFile, config: dict, input_name: str) -> dict:
    """`config` updated by the file's own `config` metadata, when it carries one (it describes the file's
    main part: a bundle's VAE, read under first_stage_model., does not take it)."""
    text = file.metadata.get("config")
    if not text or file.prefix in ("first_stage_model.", "vae.", "pretransform.model.", "conditioner.conditioners."):
        return config
    try:
        carried = json.loads(text)
    except json.JSONDecodeError:
        raise OmniInputError(input_name, file.name, "its metadata holds a `config` that is not valid JSON",
                             "download the file again, or use the release's original file") from None
    return {**config, **{key: value for key, value in carried.items() if not key.startswith("_")}}


def require_keys(file: WeightsFile, keys: tuple[str, ...], input_name: str, what: str, fix: str) -> None:
    missing = [key for key in keys if key not in file.tensors]
    if missing:
        raise OmniInputError(input_name, file.name, f"this is not {what} (no tensor {missing[0]!r})", fix)
