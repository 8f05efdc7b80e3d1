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
from . import flux, flux2_klein, qwen_image, sd3, z_image
from .profile import FilesProfile
from .text_encoders import kind_of
from .weights_file import WeightsFile, inspect_weights_file, read_tensors

PROFILES: dict[str, FilesProfile] = {profile.family_key: profile for profile in (qwen_image.PROFILE, flux.PROFILE,
                                                                                 z_image.PROFILE, sd3.PROFILE,
                                                                                 flux2_klein.PROFILE)}


@dataclass(frozen=True)
class ModelFiles:
    """A model as single files (absolute paths), plus where the tokenizer files may be."""

    diffusion_model: str
    text_encoder: str
    vae: str
    tokenizer_dirs: tuple[str, ...] = ()  # folders holding e.g. qwen25_tokenizer/ (ComfyUI's comfy/text_encoders)
    text_encoder_2: str = ""  # FLUX.1's t5xxl, SD3's clip_g, ... ("" = none)
    text_encoder_3: str = ""  # SD3's t5xxl

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
    return _inspect(files, *(_stamp(path) for path in (files.diffusion_model, files.text_encoder, files.vae,
                                                       files.text_encoder_2, files.text_encoder_3)))


def _stamp(path: str) -> tuple:
    stat = Path(path).stat() if path and Path(path).exists() else None
    return (stat.st_size, stat.st_mtime_ns) if stat else (0, 0)


@lru_cache(maxsize=64)
def _inspect(files: ModelFiles, *_stamps) -> ModelFolder:
    for input_name in ("diffusion_model", "text_encoder", "vae"):
        if not Path(getattr(files, input_name)).is_file():
            raise OmniInputError(input_name, getattr(files, input_name), "the file does not exist",
                                 f"choose a file from models/{_FOLDER[input_name]}")
    dit = inspect_weights_file(files.diffusion_model, "diffusion_model")
    profile = detect_family(dit)
    encoders = _encoder_files(profile, files)
    vae = inspect_weights_file(files.vae, "vae")
    encoder_configs = {name: _component_config(profile, name, file) for name, file in encoders.items()}
    transformer_config = _component_config(profile, "transformer", dit)
    vae_config = _component_config(profile, "vae", vae)
    _check_pairing(profile, transformer_config, encoder_configs, encoders)
    components = {"transformer": ("diffusers", profile.transformer.class_name),
                  "vae": ("diffusers", profile.vae.class_name),
                  "scheduler": ("diffusers", profile.scheduler_class)}
    for name, component, _folder, tokenizer_class in profile.encoder_slots():
        find_tokenizer(profile, files, name)
        components[name] = ("transformers", component.class_name)
        components[name.replace("text_encoder", "tokenizer")] = ("transformers", tokenizer_class)
    return ModelFolder(path=files.diffusion_model, pipeline_class=profile.pipeline_class,
                       family_key=profile.family_key, components=components,
                       transformer_config=transformer_config, vae_config=vae_config,
                       model_index={"_class_name": profile.pipeline_class,
                                    **{name: list(entry) for name, entry in components.items()}})


_FOLDER = {"diffusion_model": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae",
           "text_encoder_2": "text_encoders", "text_encoder_3": "text_encoders"}
_COMPONENT_INPUT = {"transformer": "diffusion_model", "text_encoder": "text_encoder", "vae": "vae",
                    "text_encoder_2": "text_encoder_2", "text_encoder_3": "text_encoder_3"}
_WHAT = {"transformer": "the diffusion model", "text_encoder": "a text encoder", "vae": "a VAE",
         "text_encoder_2": "a text encoder", "text_encoder_3": "a text encoder"}


def _encoder_files(profile: FilesProfile, files: ModelFiles) -> dict[str, WeightsFile]:
    """Each text encoder input the family has, checked to be given and to hold the right encoder (a T5
    file in the CLIP input is refused here, naming the swap, before any weight loads)."""
    slots = [name for name, *_ in profile.encoder_slots()]
    for extra in ("text_encoder_2", "text_encoder_3"):
        if getattr(files, extra) and extra not in slots:
            raise OmniInputError(extra, Path(getattr(files, extra)).name,
                                 f"{profile.family_key} has {len(slots)} text encoder(s), so this input is unused",
                                 f"set {extra} to none")
    encoders = {}
    for name in slots:
        path = getattr(files, name)
        expected = profile.encoder_kinds.get(name)
        wanted = expected[0] if expected else "its text encoder"  # the released kind (others: other widths)
        template = profile.template_names("bf16").get(name, "")  # the bf16 release's name, for the fix
        if not path:
            raise OmniInputError(name, "none", f"{profile.family_key} needs {wanted} here",
                                 f"choose {template or 'the text encoder file'} from models/text_encoders")
        if not Path(path).is_file():
            raise OmniInputError(name, path, "the file does not exist", "choose a file from models/text_encoders")
        file = inspect_weights_file(path, name)
        kind = kind_of(file)
        if expected and kind not in expected:
            elsewhere = [other for other in slots if other != name and kind in profile.encoder_kinds.get(other, ())]
            fix = (f"this file belongs in {elsewhere[0]}: swap {name} and {elsewhere[0]}" if elsewhere
                   else f"choose {template or wanted} from models/text_encoders")
            raise OmniInputError(name, file.name, f"it holds {kind}, but {profile.family_key}'s {name} is {wanted}",
                                 fix)
        encoders[name] = file
    return encoders


def _component_config(profile: FilesProfile, component: str, file: WeightsFile) -> dict:
    input_name = _COMPONENT_INPUT[component]
    try:
        part = (profile.transformer if component == "transformer" else profile.vae if component == "vae"
                else dict((name, c) for name, c, *_ in profile.encoder_slots())[component])
        return part.config(file)
    except (TypeError, KeyError, ValueError, IndexError) as exc:
        if isinstance(exc, OmniInputError):
            raise
        raise OmniInputError(input_name, file.name, f"this is not {_WHAT[component]} of {profile.family_key} "
                             f"(its tensors do not have that model's names and shapes: {exc!r})",
                             f"choose {profile.family_key}'s {_WHAT[component].split()[-1]} file from "
                             f"models/{_FOLDER[input_name]}") from None


def _check_pairing(profile: FilesProfile, transformer: dict, encoder_configs: dict, encoders: dict) -> None:
    """The DiT reads the text encoders' hidden states: their widths must agree (a 3B encoder with the
    7B model's DiT would fail deep inside the first step)."""
    for names, width_key, transformer_key, *stacked in profile.pairings:
        names = names if isinstance(names, tuple) else (names,)  # several: their widths side by side (SD3)
        widths = [encoder_configs[name].get("text_config", encoder_configs[name]).get(width_key) for name in names]
        width, name = sum(widths) * (stacked[0] if stacked else 1), names[-1]
        wanted = transformer.get(transformer_key)
        if wanted is not None and width != wanted:
            what = (f"its hidden size is {widths[0]}" + (f" ({stacked[0]} layers stacked: {width})" if stacked else "")
                    if len(names) == 1 else
                    f"with {' and '.join(names[:-1])} its width adds up to {' + '.join(map(str, widths))} = {width}")
            raise OmniInputError(name, encoders[name].name, f"{what}, but this "
                                 f"{profile.family_key} diffusion model reads text features of width {wanted}",
                                 "choose the text encoder that belongs to this diffusion model (see the model's "
                                 "ComfyUI template)")


def find_tokenizer(profile: FilesProfile, files: ModelFiles, input_name: str = "text_encoder") -> Path:
    """The tokenizer folder: beside the text encoder file (text_encoders/<name>/), else ComfyUI's own."""
    folder = {name: tokenizer_folder for name, _c, tokenizer_folder, _t in profile.encoder_slots()}[input_name]
    encoder = getattr(files, input_name)
    candidates = [Path(encoder).parent / folder, *(Path(root) / folder for root in files.tokenizer_dirs)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise OmniInputError(input_name, Path(encoder).name,
                         f"its tokenizer files ({folder}/) were not found (looked in "
                         f"{', '.join(str(c.parent) for c in candidates)})",
                         f"run inside ComfyUI (it ships comfy/{'' if folder == 'sd1_tokenizer' else 'text_encoders/'}"
                         f"{folder}), or copy that folder next to the text encoder file")


def load_pipeline_from_files(files: ModelFiles, info: ModelFolder, dtype):
    """The diffusers pipeline, every weight read from the single files (on the CPU, in `dtype`)."""
    import diffusers
    import transformers

    profile = PROFILES[info.family_key]
    parts = {
        "transformer": _load_component(profile.transformer, files.diffusion_model, info.transformer_config, dtype,
                                       "diffusion_model"),
        "vae": _load_component(profile.vae, files.vae, info.vae_config, dtype, "vae"),
        "scheduler": getattr(diffusers, profile.scheduler_class).from_config(
            profile.scheduler_for(info.transformer_config)),
    }
    for name, component, _folder, tokenizer_class in profile.encoder_slots():
        path = getattr(files, name)
        config = component.config(inspect_weights_file(path, name))
        parts[name] = _load_component(component, path, config, dtype, name)
        tokenizer = getattr(transformers, tokenizer_class).from_pretrained(find_tokenizer(profile, files, name),
                                                                           local_files_only=True)
        # ComfyUI's comfy/sd1_tokenizer says 8192 tokens (ComfyUI cuts prompts into 77-token windows itself);
        # the pipelines pad CLIP prompts to model_max_length, which must be CLIP's 77 positions.
        positions = config.get("max_position_embeddings") if component.class_name.startswith("CLIP") else None
        if positions and tokenizer.model_max_length > positions:
            tokenizer.model_max_length = positions
        if profile.tokenizer_setup is not None:
            tokenizer = profile.tokenizer_setup(name, tokenizer)
        parts[name.replace("text_encoder", "tokenizer")] = tokenizer
    extra = profile.pipeline_kwargs(files) if profile.pipeline_kwargs is not None else {}
    return getattr(diffusers, profile.pipeline_class)(**parts, **extra)


def _load_component(component, path: str, config: dict, dtype, input_name: str):
    from accelerate import init_empty_weights

    library = importlib.import_module(component.library)
    cls = getattr(library, component.class_name)
    with init_empty_weights():  # parameters on the meta device: no random init of billions of weights
        if component.library == "diffusers":
            module = cls.from_config(config)
        else:
            module = cls(cls.config_class.from_dict(config))
    file = inspect_weights_file(path, input_name)
    state = component.keys(read_tensors(file, dtype), config)
    expected = dict(module.state_dict())
    missing = [key for key in expected if key not in state and key not in component.stand_ins]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        shown = ", ".join((missing or unexpected)[:3])
        raise OmniInputError(input_name, file.name,
                             f"its tensors do not fit {component.class_name} ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected: {shown})",
                             "use the release's original file (this one is from another model or version)")
    state.update({key: state[source] for key, source in component.stand_ins.items() if key not in state})
    module.load_state_dict(state, strict=True, assign=True)
    return module.to(dtype)
