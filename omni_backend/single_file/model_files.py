"""A model made of ComfyUI's single files: which files, checked and understood without reading a weight,
and the diffusers pipeline they build.

`inspect_model_files` gives the same `ModelFolder` description a diffusers folder gives (family,
pipeline class, configs), so every feature works on either source unchanged. The weights are read by
`load_pipeline_from_files`: prefix stripped, FP8 linears kept as stored (stored_fp8.py), keys mapped to the diffusers or
transformers class, loaded strictly (a tensor missing or left over is an error, not a silent default).
"""

from __future__ import annotations

import importlib
from itertools import chain
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import OmniError, OmniInputError
from ..families import FAMILIES, most_specific, single_file_profiles
from ..memory.fp8 import FP8Linear
from ..memory.fp8_layers import dit_modulation_targets, dit_targets, text_encoder_targets
from ..system.process_lock import process_lock
from ..weights.model_folder import ModelFolder
from .profile import FilesProfile
from .stored_fp8 import StoredFP8, dequantize, is_fp8, row_scale
from .text_encoders import kind_of
from .weights_file import WeightsFile, inspect_weights_file, read_tensors

# Every family folder's layouts (families/<name>/single_file.py), found by the family registry.
PROFILES: dict[str, FilesProfile] = {profile.family_key: profile for profile in single_file_profiles()}
AUTO = "auto"


@dataclass(frozen=True)
class ModelFiles:
    """A model as single files (absolute paths), plus where the tokenizer files may be."""

    diffusion_model: str
    text_encoder: str
    vae: str
    tokenizer_dirs: tuple[str, ...] = ()  # folders holding e.g. qwen25_tokenizer/ (ComfyUI's comfy/text_encoders)
    diffusion_model_2: str = ""  # Wan2.2 A14B's low-noise expert -> pipeline.transformer_2
    family: str = AUTO  # where shapes cannot tell (families sharing one DiT); "auto": the shapes decide
    text_encoder_2: str = ""  # FLUX.1's t5xxl, SD3's clip_g, ... ("" = none)
    text_encoder_3: str = ""  # SD3's t5xxl

    @property
    def name(self) -> str:
        return Path(self.diffusion_model).name


def detect_family(file: WeightsFile, family: str = AUTO, input_name: str = "diffusion_model") -> FilesProfile:
    """The family whose DiT this file holds, from its tensor names and shapes (no weights read); an
    explicit `family` must agree with them."""
    if family != AUTO and family not in PROFILES:
        raise OmniInputError("family", family, "no family of that name reads ComfyUI's files",
                             f"choose auto or one of: {', '.join(sorted(PROFILES))}")
    matching = most_specific([profile for profile in PROFILES.values() if profile.matches(file)],
                             key=lambda profile: profile.family_key)
    if family != AUTO:
        if PROFILES[family] in matching:
            return PROFILES[family]
        if matching or file.has(*PROFILES[family].identifying_keys):
            describe = PROFILES[family].describe
            what = describe(file) if describe and file.has(*PROFILES[family].identifying_keys) else (
                f"the DiT of {matching[0].family_key}")
            right = f"auto or {matching[0].family_key}" if matching else "auto"
            raise OmniInputError("family", family, f"{file.name} ({input_name}) holds {what}, not {family}'s",
                                 f"set family to {right}, or choose {family}'s own diffusion model file")
    elif any(profile.auto_detect for profile in matching):
        return next(profile for profile in matching if profile.auto_detect)
    sharing = [p for p in PROFILES.values() if file.has(*p.identifying_keys) and p.describe is not None]
    if sharing:  # a relative of our families (e.g. Wan 2.1 I2V) the shapes set apart
        raise OmniInputError(input_name, file.name, f"it holds {sharing[0].describe(file)}, which no family "
                             f"of this pack runs ({', '.join(sorted(PROFILES))})",
                             "choose the diffusion model file of a supported family from models/diffusion_models")
    if file.has("encoder.conv1.weight") or file.has("encoder.conv_in.weight"):
        what = "a VAE"
    elif any(key.startswith(("model.layers.", "encoder.block.", "text_model.")) for key in file.tensors):
        what = "a text encoder"
    else:
        what = "no DiT this pack knows"
    supported = ", ".join(sorted(PROFILES))
    raise OmniInputError(input_name, file.name, f"it holds {what}, not the diffusion model (DiT) of a "
                         f"supported family ({supported})",
                         "choose the model's file from models/diffusion_models (text encoders go in "
                         "text_encoders/, VAEs in vae/)")


def inspect_model_files(files: ModelFiles) -> ModelFolder:
    paths = (files.diffusion_model, files.text_encoder, files.vae, files.diffusion_model_2, files.text_encoder_2,
             files.text_encoder_3)
    return _inspect(files, *(_stamp(path) for path in paths if path))


def _stamp(path: str) -> tuple:
    stat = Path(path).stat() if Path(path).exists() else None
    return (stat.st_size, stat.st_mtime_ns) if stat else (0, 0)


@lru_cache(maxsize=64)
def _inspect(files: ModelFiles, *_stamps) -> ModelFolder:
    for input_name in ("diffusion_model", "text_encoder", "vae"):
        if input_name == "text_encoder" and not files.text_encoder:
            continue  # none: the prompt comes as CONDITIONING from ComfyUI's own text encoder
        if not Path(getattr(files, input_name)).is_file():
            raise OmniInputError(input_name, getattr(files, input_name), "the file does not exist",
                                 f"choose a file from models/{_FOLDER[input_name]}")
    dit = inspect_weights_file(files.diffusion_model, "diffusion_model")
    profile = detect_family(dit, files.family)
    encoders = _encoder_files(profile, files) if files.text_encoder else _without_text_encoders(profile, files)
    vae = inspect_weights_file(files.vae, "vae")
    encoder_configs = {name: _component_config(profile, name, file) for name, file in encoders.items()}
    transformer_config = _component_config(profile, "transformer", dit)
    vae_config = _component_config(profile, "vae", vae)
    _check_second_expert(profile, files, dit, transformer_config)
    _check_pairing(profile, transformer_config, encoder_configs, encoders)
    configs = {"transformer": transformer_config, "text_encoder": encoder_configs.get("text_encoder", {}),
               "vae": vae_config}
    for check in profile.pairing_checks:
        check(profile, configs, {"diffusion_model": dit, "text_encoder": encoders.get("text_encoder"), "vae": vae})
    _check_bundled(profile, dit)
    components = {"transformer": ("diffusers", profile.transformer.class_name),
                  "vae": ("diffusers", profile.vae.class_name),
                  "scheduler": ("diffusers", profile.scheduler_class)}
    for name, component, _folder, tokenizer_class in profile.encoder_slots():
        if name not in encoders:
            continue
        find_tokenizer(profile, files, name, encoders[name])
        components[name] = ("transformers", component.class_name)
        components[name.replace("text_encoder", "tokenizer")] = ("transformers", tokenizer_class)
    for name, component in profile.bundled.items():
        components[name] = (component.library, component.class_name)
    if profile.second_expert:
        components["transformer_2"] = ("diffusers", profile.transformer.class_name)
    if profile.processor is not None:
        components[profile.processor_name] = ("transformers", "Qwen2VLProcessor")
    return ModelFolder(path=files.diffusion_model, pipeline_class=profile.pipeline_class,
                       family_key=profile.family_key, components=components,
                       transformer_config=transformer_config, vae_config=vae_config,
                       model_index={"_class_name": profile.pipeline_class, **_plain(profile.pipeline_arguments(files)),
                                    **{name: list(entry) for name, entry in components.items()}})


_FOLDER = {"diffusion_model": "diffusion_models", "diffusion_model_2": "diffusion_models", "vae": "vae",
           "text_encoder": "text_encoders", "text_encoder_2": "text_encoders", "text_encoder_3": "text_encoders"}
_COMPONENT_INPUT = {"transformer": "diffusion_model", "text_encoder": "text_encoder", "vae": "vae",
                    "text_encoder_2": "text_encoder_2", "text_encoder_3": "text_encoder_3"}
_WHAT = {"transformer": "the diffusion model", "text_encoder": "a text encoder", "vae": "a VAE",
         "text_encoder_2": "a text encoder", "text_encoder_3": "a text encoder"}


def _plain(pipeline_kwargs: dict) -> dict:
    """The pipeline arguments a model_index.json would list (values, not components left out)."""
    return {key: value for key, value in pipeline_kwargs.items() if value is not None}


def _check_second_expert(profile: FilesProfile, files: ModelFiles, dit: WeightsFile, config: dict) -> None:
    """Wan2.2 A14B runs two experts: the high-noise DiT for the first steps, the low-noise one after the
    boundary. One alone would be asked to denoise steps it never learned (diffusers' pipeline would run
    the high-noise expert for every step when transformer_2 is missing), so both are required."""
    if not profile.second_expert:
        if files.diffusion_model_2:
            raise OmniInputError("diffusion_model_2", Path(files.diffusion_model_2).name,
                                 f"{profile.family_key} has one diffusion model, no second expert",
                                 "set diffusion_model_2 to none")
        return
    low_name = profile.file_names.get("diffusion_model_2", "").format(weights="*")
    if not files.diffusion_model_2:
        raise OmniInputError("diffusion_model_2", "none", f"{profile.family_key} (A14B) runs two expert diffusion "
                             f"models and only {dit.name} was given",
                             f"choose the low-noise expert ({low_name}) as diffusion_model_2 and the high-noise one "
                             "as diffusion_model")
    if not Path(files.diffusion_model_2).is_file():
        raise OmniInputError("diffusion_model_2", files.diffusion_model_2, "the file does not exist",
                             "choose a file from models/diffusion_models")
    second = inspect_weights_file(files.diffusion_model_2, "diffusion_model_2")
    other = detect_family(second, AUTO, "diffusion_model_2")
    if other is not profile:
        raise OmniInputError("diffusion_model_2", second.name, f"it holds the diffusion model of "
                             f"{other.family_key}, but diffusion_model is {profile.family_key}'s",
                             f"choose {profile.family_key}'s low-noise expert ({low_name})")
    if _component_config(profile, "transformer", second) != config:
        raise OmniInputError("diffusion_model_2", second.name, "its shapes differ from diffusion_model's (the two "
                             "experts of one model have the same architecture)",
                             f"choose the low-noise expert of the same model ({low_name})")
    # The experts share their shapes; only ComfyUI's file names tell them apart.
    if "low_noise" in dit.name and "high_noise" in second.name:
        raise OmniInputError("diffusion_model", dit.name, f"the experts are swapped: the low-noise expert is in "
                             f"diffusion_model and the high-noise one ({second.name}) in diffusion_model_2",
                             "swap them: diffusion_model takes the high-noise expert (the first steps), "
                             "diffusion_model_2 the low-noise one")


def _check_bundled(profile: FilesProfile, dit: WeightsFile) -> None:
    """The parts a bundle holds beside the DiT (Stable-Audio-Open's conditioners) are there and readable."""
    for name, component in profile.bundled.items():
        part = inspect_weights_file(dit.path, name)
        try:
            component.config(part)
        except (TypeError, KeyError, ValueError, IndexError) as exc:
            raise OmniInputError("diffusion_model", dit.name, f"it lacks the {name} {profile.family_key}'s "
                                 f"checkpoint bundles beside the DiT ({exc!r})",
                                 f"choose {profile.family_key}'s whole checkpoint from models/checkpoints") from None


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


def _without_text_encoders(profile: FilesProfile, files: ModelFiles) -> dict:
    """text_encoder = none: the prompt arrives as CONDITIONING from ComfyUI's own text encoder, so no
    encoder loads (ComfyUI keeps it in its own memory management). Only for families whose embeddings
    match ComfyUI's (the family's conditioning_refusal says why the others do not)."""
    family = FAMILIES[profile.family_key]
    if family.conditioning_refusal is not None:
        raise OmniInputError("text_encoder", "none", f"{family.title} needs its text encoder here: Sample cannot "
                             f"take ComfyUI's CONDITIONING for it ({family.conditioning_refusal})",
                             "choose the model's text encoder file from models/text_encoders")
    for extra in ("text_encoder_2", "text_encoder_3"):
        if getattr(files, extra):
            raise OmniInputError(extra, Path(getattr(files, extra)).name, "text_encoder is none (the prompt comes "
                                 "as CONDITIONING), so no text encoder loads", f"set {extra} to none too")
    return {}


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
        if any(name not in encoder_configs for name in names):
            continue  # no text encoder loads (CONDITIONING): Sample checks the embeddings' width instead
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


def find_tokenizer(profile: FilesProfile, files: ModelFiles, input_name: str = "text_encoder",
                   encoder: WeightsFile | None = None) -> Path | None:
    """The tokenizer folder: beside the text encoder file (text_encoders/<name>/), else ComfyUI's own;
    None when the text encoder file carries its tokenizer (ComfyUI's UMT5 files)."""
    if input_name == "text_encoder" and profile.tokenizer_tensor:
        encoder = encoder or inspect_weights_file(files.text_encoder, "text_encoder")
        if encoder.has(profile.tokenizer_tensor):
            return None
        raise OmniInputError("text_encoder", encoder.name, f"it carries no tokenizer (no {profile.tokenizer_tensor!r} "
                             "tensor, which ComfyUI's own text encoder files for this model have)",
                             "use the text encoder file ComfyUI's template downloads")
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

    profile, family = PROFILES[info.family_key], FAMILIES[info.family_key]

    def dit_fp8(transformer):
        return chain(dit_targets(family, transformer), dit_modulation_targets(family, transformer))

    parts = {
        "transformer": _load_component(profile.transformer, files.diffusion_model, info.transformer_config, dtype,
                                       "diffusion_model", dit_fp8),
        "vae": _load_component(profile.vae, files.vae, info.vae_config, dtype, "vae"),
        "scheduler": getattr(diffusers, profile.scheduler_class).from_config(
            profile.scheduler_for(info.transformer_config)),
    }
    for name, component, _folder, _tokenizer_class in profile.encoder_slots():
        if name not in info.components:  # text_encoder = none: prompts come as CONDITIONING
            parts[name] = parts[name.replace("text_encoder", "tokenizer")] = None
            continue
        encoder = inspect_weights_file(getattr(files, name), name)
        config = component.config(encoder)
        parts[name] = _load_component(component, getattr(files, name), config, dtype, name, text_encoder_targets)
        parts[name.replace("text_encoder", "tokenizer")] = _tokenizer(profile, files, name, encoder, config)
    for name, component in profile.bundled.items():  # read from the bundle under its own prefix
        parts[name] = _load_component(component, files.diffusion_model,
                                      component.config(inspect_weights_file(files.diffusion_model, name)), dtype, name)
    if profile.processor is not None:
        parts[profile.processor_name] = profile.processor(parts["tokenizer"], find_tokenizer(profile, files))
    if profile.second_expert:
        parts["transformer_2"] = _load_component(profile.transformer, files.diffusion_model_2, info.transformer_config,
                                                 dtype, "diffusion_model_2", dit_fp8)
    return family.pipeline_class(profile.pipeline_class)(**parts, **profile.pipeline_arguments(files))


def _tokenizer(profile: FilesProfile, files: ModelFiles, name: str, encoder: WeightsFile, config: dict):
    import transformers

    if name == "text_encoder" and profile.tokenizer_tensor:
        from . import umt5

        return umt5.tokenizer_from_file(encoder)
    tokenizer_class = {slot: cls for slot, _c, _f, cls in profile.encoder_slots()}[name]
    tokenizer = getattr(transformers, tokenizer_class).from_pretrained(find_tokenizer(profile, files, name, encoder),
                                                                       local_files_only=True)
    # ComfyUI's comfy/sd1_tokenizer says 8192 tokens (ComfyUI cuts prompts into 77-token windows itself);
    # the pipelines pad CLIP prompts to model_max_length, which must be CLIP's 77 positions.
    positions = config.get("max_position_embeddings") if tokenizer_class.startswith("CLIP") else None
    if positions and tokenizer.model_max_length > positions:
        tokenizer.model_max_length = positions
    if profile.tokenizer_setup is not None:
        tokenizer = profile.tokenizer_setup(name, tokenizer)
    return tokenizer


def _load_component(component, path: str, config: dict, dtype, input_name: str, fp8_targets=None):
    """`fp8_targets(module)`: the linears (memory/fp8_layers.py's targets) whose FP8 weights stay FP8."""
    library = importlib.import_module(component.library)
    cls = getattr(library, component.class_name)
    file = inspect_weights_file(path, input_name)
    try:
        return _build_component(component, cls, file, config, dtype, input_name, fp8_targets)
    except (OmniError, MemoryError, OSError):
        raise  # already named, or out of memory / a read error: not the file's shapes
    except Exception as exc:  # noqa: BLE001 - diffusers/transformers/torch raise many kinds here
        # The shapes the config was derived from (or the file's own `config` metadata) do not fit
        # together: a class that cannot be built, a split that does not add up, a size mismatch.
        if "out of memory" in str(exc).lower():
            raise
        raise OmniInputError(input_name, file.name, f"{component.class_name} cannot be built from its tensors' "
                             f"shapes ({_first_line(exc)})", "use the release's original file (this one was "
                             "edited, damaged or belongs to another model or version)") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = "; ".join(lines[:2]) if lines else type(exc).__name__
    return text[:300]


def _build_component(component, cls, file: WeightsFile, config: dict, dtype, input_name: str, fp8_targets=None):
    from accelerate import init_empty_weights

    # Parameters on the meta device (no random init of billions of weights): accelerate patches
    # torch.nn.Module for the whole process meanwhile, so under the process lock (process_lock.py).
    with process_lock(), init_empty_weights():
        if component.library == "diffusers":
            module = cls.from_config(config)
        else:
            module = cls(cls.config_class.from_dict(config))
    kept = kept_in_float32(cls, component.library, dtype)
    keep = [key for key in module.state_dict() if kept(key)]
    # The file's names of those tensors (the writer's map, applied to names only: a pure renaming there).
    float32_keys = frozenset(component.to_file_keys(dict.fromkeys(keep), config)) if keep else frozenset()
    stored = StoredFP8() if fp8_targets is not None and file.weight_format.startswith("fp8") else None
    read = read_tensors(file, dtype, fp8=stored, float32_keys=float32_keys)
    state = component.keys(read, config)
    expected = dict(module.state_dict())
    missing = [key for key in expected if key not in state and key not in component.stand_ins]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        shown = ", ".join((missing or unexpected)[:3])
        raise OmniInputError(input_name, file.name,
                             f"its tensors do not fit {component.class_name} ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected: {shown})",
                             "use the release's original file (this one is from another model or version)")
    stood_in = [key for key in component.stand_ins if key not in state]
    state.update({key: state[component.stand_ins[key]] for key in stood_in})
    if stored is not None:
        _keep_fp8_linears(state, stored.mapped_scales(component.keys, read, config),
                          _fp8_linears(module, fp8_targets), component.stand_ins, kept, dtype)
    module.load_state_dict(state, strict=True, assign=True)
    # As from_pretrained: loaded tensors in `dtype` except the modules the class keeps in float32; diffusers
    # leaves buffers that are not weights (e.g. Wan's rotary tables) as built, transformers casts them.
    for name, sub in module.named_modules():
        if isinstance(sub, FP8Linear):
            continue  # FP8 as stored, its scale in float32, its bias read in `dtype` like every tensor
        for table in (sub._parameters, sub._buffers):
            for attribute, tensor in table.items():
                key = f"{name}.{attribute}" if name else attribute
                if (tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype or kept(key)
                        or (key not in expected and component.library == "diffusers")):
                    continue
                cast = tensor.detach().to(dtype)
                table[attribute] = torch.nn.Parameter(cast, requires_grad=tensor.requires_grad) \
                    if isinstance(tensor, torch.nn.Parameter) else cast
    # Which parameters the file did not have (e.g. an LLM's output head): a family whose option would
    # use them (LongCat's prompt rewrite generates text) refuses that option instead of running it wrong.
    module._omni_stood_in = tuple(stood_in)
    return module


def _fp8_linears(module, fp8_targets) -> dict:
    """{weight key: (parent, attribute)} of the linears whose FP8 weights stay FP8."""
    names = {id(sub): name for name, sub in module.named_modules()}
    return {f"{names[id(linear)]}.weight": (parent, attribute)
            for _name, parent, attribute, linear in fp8_targets(module)}


def _keep_fp8_linears(state: dict, scales: dict | None, linears: dict, stand_ins: dict, kept, dtype):
    """Swap each target linear whose weight the file stores in FP8 for an FP8Linear holding it (with its
    [out, 1] scale in `state`, for load_state_dict); dequantize every other FP8 tensor to its dtype."""
    for key, tensor in list(state.items()):
        if not is_fp8(tensor):
            continue
        scale = None if scales is None else scales[stand_ins.get(key, key)]
        wanted = torch.float32 if kept(key) else dtype
        per_row = row_scale(scale, tensor) if key in linears and tensor.dim() == 2 else None
        if per_row is None:
            state[key] = dequantize(tensor, scale, wanted)
            continue
        parent, attribute = linears[key]
        setattr(parent, attribute, FP8Linear.empty_like(getattr(parent, attribute), wanted))
        state[key[:-len("weight")] + "weight_scale"] = per_row


def kept_in_float32(cls, library: str, dtype):
    """Which parameters the class's from_pretrained keeps in float32 at `dtype` (diffusers: always its
    `_keep_in_fp32_modules`; transformers: its `_strict` ones for bf16/fp16, the others for fp16 only)."""
    import torch

    names = set(getattr(cls, "_keep_in_fp32_modules", None) or ())
    if library == "transformers":
        names = set(getattr(cls, "_keep_in_fp32_modules_strict", None) or ()) if dtype != torch.float16 else (
            names | set(getattr(cls, "_keep_in_fp32_modules_strict", None) or ()))
        if dtype not in (torch.float16, torch.bfloat16):
            names = set()
    return lambda key: any(part in names for part in key.split("."))
