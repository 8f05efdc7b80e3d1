"""A model made of ComfyUI's single files: which files, checked and understood without reading a weight,
and the diffusers pipeline they build.

`inspect_model_files` gives the same `ModelFolder` description a diffusers folder gives (family,
pipeline class, configs), so every feature works on either source unchanged. The weights are read by
`load_pipeline_from_files`: prefix stripped, scaled FP8 dequantized, keys mapped to the diffusers or
transformers class, loaded strictly (a tensor missing or left over is an error, not a silent default).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import OmniInputError
from ..model_folder import ModelFolder
from . import qwen_image
from .profile import FilesProfile
from .weights_file import WeightsFile, inspect_weights_file, read_tensors

PROFILES: dict[str, FilesProfile] = {profile.family_key: profile for profile in (qwen_image.PROFILE,)}


@dataclass(frozen=True)
class ModelFiles:
    """A model as single files (absolute paths), plus where the tokenizer files may be."""

    diffusion_model: str
    text_encoder: str
    vae: str
    tokenizer_dirs: tuple[str, ...] = ()  # folders holding e.g. qwen25_tokenizer/ (ComfyUI's comfy/text_encoders)

    @property
    def name(self) -> str:
        return Path(self.diffusion_model).name


def detect_family(file: WeightsFile) -> FilesProfile:
    """The family whose DiT this file holds, from its tensor names (no weights read)."""
    for profile in PROFILES.values():
        if file.has(*profile.identifying_keys):
            return profile
    if file.has("encoder.conv1.weight") or file.has("encoder.conv_in.weight"):
        what = "a VAE"
    elif any(key.startswith(("model.layers.", "encoder.block.", "text_model.")) for key in file.tensors):
        what = "a text encoder"
    else:
        what = "no DiT this pack knows"
    supported = ", ".join(sorted(PROFILES))
    raise OmniInputError("diffusion_model", file.name, f"it holds {what}, not the diffusion model (DiT) of a "
                         f"supported family ({supported})",
                         "choose the model's file from models/diffusion_models (text encoders go in "
                         "text_encoders/, VAEs in vae/)")


def inspect_model_files(files: ModelFiles) -> ModelFolder:
    return _inspect(files, *(_stamp(path) for path in (files.diffusion_model, files.text_encoder, files.vae)))


def _stamp(path: str) -> tuple:
    stat = Path(path).stat() if Path(path).exists() else None
    return (stat.st_size, stat.st_mtime_ns) if stat else (0, 0)


@lru_cache(maxsize=64)
def _inspect(files: ModelFiles, *_stamps) -> ModelFolder:
    for input_name in ("diffusion_model", "text_encoder", "vae"):
        if not Path(getattr(files, input_name)).is_file():
            raise OmniInputError(input_name, getattr(files, input_name), "the file does not exist",
                                 f"choose a file from models/{_FOLDER[input_name]}")
    dit = inspect_weights_file(files.diffusion_model, "diffusion_model")
    profile = detect_family(dit)
    encoder = inspect_weights_file(files.text_encoder, "text_encoder")
    vae = inspect_weights_file(files.vae, "vae")
    text_encoder_config = _component_config(profile, "text_encoder", encoder)
    transformer_config = _component_config(profile, "transformer", dit)
    vae_config = _component_config(profile, "vae", vae)
    _check_pairing(profile, transformer_config, text_encoder_config, encoder)
    find_tokenizer(profile, files)
    components = {"transformer": ("diffusers", profile.transformer.class_name),
                  "vae": ("diffusers", profile.vae.class_name),
                  "text_encoder": ("transformers", profile.text_encoder.class_name),
                  "tokenizer": ("transformers", profile.tokenizer_class),
                  "scheduler": ("diffusers", profile.scheduler_class)}
    return ModelFolder(path=files.diffusion_model, pipeline_class=profile.pipeline_class,
                       family_key=profile.family_key, components=components,
                       transformer_config=transformer_config, vae_config=vae_config,
                       model_index={"_class_name": profile.pipeline_class,
                                    **{name: list(entry) for name, entry in components.items()}})


_FOLDER = {"diffusion_model": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"}
_COMPONENT_INPUT = {"transformer": "diffusion_model", "text_encoder": "text_encoder", "vae": "vae"}
_WHAT = {"transformer": "the diffusion model", "text_encoder": "a text encoder", "vae": "a VAE"}


def _component_config(profile: FilesProfile, component: str, file: WeightsFile) -> dict:
    input_name = _COMPONENT_INPUT[component]
    try:
        return getattr(profile, component).config(file)
    except (TypeError, KeyError, ValueError, IndexError) as exc:
        if isinstance(exc, OmniInputError):
            raise
        raise OmniInputError(input_name, file.name, f"this is not {_WHAT[component]} of {profile.family_key} "
                             f"(its tensors do not have that model's names and shapes: {exc!r})",
                             f"choose {profile.family_key}'s {_WHAT[component].split()[-1]} file from "
                             f"models/{_FOLDER[input_name]}") from None


def _check_pairing(profile: FilesProfile, transformer: dict, text_encoder: dict, encoder: WeightsFile) -> None:
    """The DiT reads the text encoder's hidden states: their widths must agree (a 3B encoder with the
    7B model's DiT would fail deep inside the first step)."""
    width = text_encoder.get("text_config", text_encoder).get("hidden_size")
    wanted = transformer.get("joint_attention_dim")
    if wanted is not None and width != wanted:
        raise OmniInputError("text_encoder", encoder.name, f"its hidden size is {width}, but this "
                             f"{profile.family_key} diffusion model reads text features of width {wanted}",
                             "choose the text encoder that belongs to this diffusion model (see the model's "
                             "ComfyUI template)")


def find_tokenizer(profile: FilesProfile, files: ModelFiles) -> Path:
    """The tokenizer folder: beside the text encoder file (text_encoders/<name>/), else ComfyUI's own."""
    candidates = [Path(files.text_encoder).parent / profile.tokenizer_folder,
                  *(Path(folder) / profile.tokenizer_folder for folder in files.tokenizer_dirs)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise OmniInputError("text_encoder", Path(files.text_encoder).name,
                         f"its tokenizer files ({profile.tokenizer_folder}/) were not found (looked in "
                         f"{', '.join(str(c.parent) for c in candidates)})",
                         f"run inside ComfyUI (it ships comfy/text_encoders/{profile.tokenizer_folder}), or copy "
                         f"that folder next to the text encoder file")


def load_pipeline_from_files(files: ModelFiles, info: ModelFolder, dtype):
    """The diffusers pipeline, every weight read from the single files (on the CPU, in `dtype`)."""
    import diffusers
    import transformers

    profile = PROFILES[info.family_key]
    encoder = inspect_weights_file(files.text_encoder, "text_encoder")
    parts = {
        "transformer": _load_component(profile.transformer, files.diffusion_model, info.transformer_config, dtype),
        "vae": _load_component(profile.vae, files.vae, info.vae_config, dtype),
        "text_encoder": _load_component(profile.text_encoder, files.text_encoder,
                                        profile.text_encoder.config(encoder), dtype),
        "tokenizer": getattr(transformers, profile.tokenizer_class).from_pretrained(
            find_tokenizer(profile, files), local_files_only=True),
        "scheduler": getattr(diffusers, profile.scheduler_class).from_config(profile.scheduler_config),
    }
    return getattr(diffusers, profile.pipeline_class)(**parts)


def _load_component(component, path: str, config: dict, dtype):
    from accelerate import init_empty_weights

    library = importlib.import_module(component.library)
    cls = getattr(library, component.class_name)
    with init_empty_weights():  # parameters on the meta device: no random init of billions of weights
        if component.library == "diffusers":
            module = cls.from_config(config)
        else:
            module = cls(cls.config_class.from_dict(config))
    file = inspect_weights_file(path, _input_for(component))
    state = component.keys(read_tensors(file, dtype), config)
    expected = dict(module.state_dict())
    missing = [key for key in expected if key not in state and key not in component.stand_ins]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        shown = ", ".join((missing or unexpected)[:3])
        raise OmniInputError(_input_for(component), file.name,
                             f"its tensors do not fit {component.class_name} ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected: {shown})",
                             "use the release's original file (this one is from another model or version)")
    state.update({key: state[source] for key, source in component.stand_ins.items() if key not in state})
    module.load_state_dict(state, strict=True, assign=True)
    return module.to(dtype)


def _input_for(component) -> str:
    return {"transformers": "text_encoder"}.get(component.library) or (
        "vae" if "Autoencoder" in component.class_name else "diffusion_model")
