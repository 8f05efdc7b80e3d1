"""Check a diffusers model folder and read its configs, without touching any weights.

Load Omni Model calls this, so a wrong folder fails at the loader node, in milliseconds, with a
message that names the file that is missing. It also refuses folders that would make diffusers
import code from outside diffusers/transformers (a model_index.json naming a custom module is
remote code by another name).

The same check marks unusable folders in Load Omni Model's list (it runs on every INPUT_TYPES
call), so it reads directory listings and small JSON files only, never a weight, and its result
is kept until a file in the folder or one of its component subfolders is added, removed or renamed.

A folder may keep a weights component once for two models: model_index.json's
`"_omni_shared_components": {"vae": "../qwen-image-shapes/vae"}` says that the component lives in a
model folder beside this one (the shipped reference edit model shares the text-to-image model's VAE
this way). The path is relative and stays inside the folder's parent directory, so a folder can name
only its neighbours. A JSON entry rather than a symbolic link, because links are lost on Windows and
in some zip downloads. diffusers alone does not read the entry: pass the component in
(`from_pretrained(folder, vae=AutoencoderKLQwenImage.from_pretrained(".../vae"))`), as the loader does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import OmniInputError
from ..families import FAMILIES, ModelFamily, family_for_pipeline

TRUSTED_LIBRARIES = {"diffusers", "transformers"}
MODEL_COMPONENT_PREFIXES = ("transformer", "vae", "text_encoder")
SHARED_COMPONENTS_KEY = "_omni_shared_components"  # component -> its folder beside this one (see above)
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}
# The file each library writes for an unsharded component: named in the fix for a missing one.
WEIGHTS_FILE = {"diffusers": "diffusion_pytorch_model.safetensors", "transformers": "model.safetensors"}
RECOPY = "re-download or copy the whole model folder"

# Short labels for the model list: why a folder is offered as unusable ("<name> (broken: ...)").
BROKEN_WEIGHTS = "broken: weights missing"
BROKEN_FILES = "broken: files missing"
BROKEN_CONFIG = "broken: unreadable config"
UNSUPPORTED = "unsupported"


class UnusableFolderError(OmniInputError):
    """The folder cannot be loaded; `label` says why in a few words, for the model list."""

    def __init__(self, input_name: str, value, problem: str, fix: str, label: str = BROKEN_FILES):
        super().__init__(input_name, value, problem, fix)
        self.label = label


@dataclass(frozen=True)
class ModelFolder:
    path: str
    pipeline_class: str
    family_key: str
    components: dict = field(hash=False, compare=False)  # name -> (library, class)
    transformer_config: dict = field(hash=False, compare=False)
    vae_config: dict = field(hash=False, compare=False)
    model_index: dict = field(hash=False, compare=False)
    shared: dict = field(default_factory=dict, hash=False, compare=False)  # name -> absolute folder path

    @property
    def family(self) -> ModelFamily:
        return FAMILIES[self.family_key]

    @property
    def name(self) -> str:
        return Path(self.path).name

    def component_path(self, name: str) -> Path:
        """The folder holding component `name`: its subfolder, or the folder beside it that it shares."""
        return Path(self.shared[name]) if name in self.shared else Path(self.path) / name


def inspect_model_folder(path: str | Path, input_name: str = "model") -> ModelFolder:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise OmniInputError(input_name, str(path), "the folder does not exist",
                             "choose a model folder that contains model_index.json (diffusers format)")
    folder = folder.resolve()
    stamp = _listing_stamp(folder)
    found = _inspect(str(folder), stamp, input_name)
    if isinstance(found, ModelFolder) and found.shared:
        # A shared component's folder is another model's: its changes are checked here too.
        found = _inspect(str(folder), (*stamp, *(_listing_stamp(Path(p)) for p in found.shared.values())),
                         input_name)
    if isinstance(found, OmniInputError):
        raise found.with_traceback(None)  # the cached error, raised afresh from here
    return found


def _listing_stamp(folder: Path) -> tuple:
    """Changes when model_index.json changes or an entry of the folder or of one of its subfolders
    is added, removed or renamed (a directory's mtime): a deleted or restored weights file re-checks."""
    if not folder.is_dir():
        return (0,)
    stamps = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name == "model_index.json" or entry.is_dir():
                stamps.append((entry.name, entry.stat().st_mtime_ns))
    return (folder.stat().st_mtime_ns, *sorted(stamps))


@lru_cache(maxsize=256)
def _inspect(folder_str: str, _stamp: tuple, input_name: str) -> ModelFolder | OmniInputError:
    # Errors are cached too (returned, not raised): a broken folder is checked again only when its
    # listing changes, not on every refresh of the model list.
    try:
        return _read_folder(Path(folder_str), input_name)
    except OmniInputError as exc:
        return exc.with_traceback(None)  # the cache keeps the error, not the frames it came from


def _read_folder(folder: Path, input_name: str) -> ModelFolder:
    folder_str = str(folder)
    if not folder.is_dir():
        raise UnusableFolderError(input_name, folder_str, "this is a file, not a diffusers model folder",
                                  "single-file checkpoints are not supported; choose the folder that contains "
                                  "model_index.json", label=UNSUPPORTED)
    index = _read_json(folder / "model_index.json", input_name,
                       fix="choose a folder in diffusers format (it has model_index.json at its top)")
    class_name = index.get("_class_name")
    family = family_for_pipeline(class_name, index, folder) if isinstance(class_name, str) else None
    if family is None:
        supported = ", ".join(sorted(c for f in FAMILIES.values() for c in f.pipeline_classes))
        raise UnusableFolderError(input_name, folder.name,
                                  f"its pipeline {class_name!r} is not a supported family",
                                  f"use a model whose model_index.json names one of: {supported}",
                                  label=UNSUPPORTED)

    shared = _shared_components(folder, index, input_name)
    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, cls = entry
        if library is None or cls is None:
            continue  # optional component left empty (e.g. SD3's image_encoder)
        if library not in TRUSTED_LIBRARIES and not is_diffusers_pipeline_module(library):
            raise UnusableFolderError(input_name, folder.name,
                                      f"component {name!r} comes from {library!r}, which would run code shipped "
                                      "with the model",
                                      "only diffusers/transformers components are loaded; use an official folder",
                                      label=UNSUPPORTED)
        _check_component(folder, name, library, cls, input_name, shared.get(name))
        components[name] = (library, cls)
    if set(shared) - set(components):
        unknown = ", ".join(sorted(set(shared) - set(components)))
        raise UnusableFolderError(input_name, folder.name, f"{SHARED_COMPONENTS_KEY} names {unknown}, which "
                                  "model_index.json does not list as a component",
                                  "list the component in model_index.json or remove it from "
                                  f"{SHARED_COMPONENTS_KEY}", label=BROKEN_CONFIG)

    for required in family.transformer_components[:1] + ("vae", "scheduler"):
        if required not in components:
            raise UnusableFolderError(input_name, folder.name, f"model_index.json lists no {required!r} component",
                                      f"use a complete {family.title} folder")

    def config_of(name: str) -> dict:
        return _read_json(shared.get(name, folder / name) / "config.json", input_name)

    return ModelFolder(
        path=folder_str, pipeline_class=class_name, family_key=family.key, components=components,
        transformer_config=config_of("transformer"), vae_config=config_of("vae"), model_index=index,
        shared={name: str(path) for name, path in shared.items()},
    )


def _shared_components(folder: Path, index: dict, input_name: str) -> dict[str, Path]:
    """The components this folder keeps in a folder beside it: name -> that folder (resolved)."""
    entries = index.get(SHARED_COMPONENTS_KEY, {})
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise UnusableFolderError(input_name, folder.name, f"model_index.json's {SHARED_COMPONENTS_KEY} is not "
                                  'an object of component name -> relative folder ("vae": "../other-model/vae")',
                                  RECOPY, label=BROKEN_CONFIG)
    shared = {}
    for name, relative in entries.items():
        target = (folder / relative).resolve()
        if not name.startswith(MODEL_COMPONENT_PREFIXES) or Path(relative).is_absolute() \
                or not target.is_relative_to(folder.parent) or target == folder.parent:
            raise UnusableFolderError(input_name, folder.name, f"model_index.json shares {name!r} from "
                                      f"{relative!r}: only a weights component (transformer, vae, text encoder) "
                                      "can be shared, from a model folder beside this one",
                                      f'name it relative to this folder, as "../<other model>/{name}"',
                                      label=BROKEN_CONFIG)
        shared[name] = target
    return shared


def is_diffusers_pipeline_module(library) -> bool:
    """diffusers saves a component defined inside a pipeline's own package under that package's name
    (Stable Audio's projection model: ["stable_audio", "StableAudioProjectionModel"]) and loads it from
    `diffusers.pipelines.<name>`: diffusers' code, not the model's."""
    import importlib.util

    if not isinstance(library, str) or not library.isidentifier():
        return False
    try:
        return importlib.util.find_spec(f"diffusers.pipelines.{library}") is not None
    except (ImportError, ValueError):
        return False


def _check_component(folder: Path, name: str, library: str, cls: str, input_name: str,
                     shared: Path | None = None) -> None:
    sub = shared or folder / name
    # Where the component is, as the messages name it: "vae/" or "../qwen-image-shapes/vae/".
    shown = f"{name}/" if shared is None else f"{os.path.relpath(shared, folder)}/"
    if not sub.is_dir():
        if shared is not None:
            raise UnusableFolderError(input_name, folder.name, f"the {name} ({cls}) it shares from {shown} (model_"
                                      f"index.json's {SHARED_COMPONENTS_KEY}) is missing",
                                      f"put the {shared.parent.name} folder beside {folder.name}, where it was "
                                      f"downloaded with it", label=BROKEN_WEIGHTS)
        raise UnusableFolderError(input_name, folder.name, f"the {name}/ subfolder ({cls}) is missing", RECOPY)
    if name.startswith(MODEL_COMPONENT_PREFIXES):
        if not (sub / "config.json").is_file():
            raise UnusableFolderError(input_name, folder.name, f"{shown}config.json is missing", RECOPY)
        _check_weights(folder, sub, shown, library, input_name)
    elif name == "scheduler" and not (sub / "scheduler_config.json").is_file():
        raise UnusableFolderError(input_name, folder.name, "scheduler/scheduler_config.json is missing", RECOPY)


def _check_weights(folder: Path, sub: Path, shown: str, library: str, input_name: str) -> None:
    """Every weights file the component in `sub` needs is there (by name: no weight is read)."""
    files = {entry.name for entry in os.scandir(sub) if entry.is_file()}
    for index_name in sorted(f for f in files if f.endswith(".safetensors.index.json")):
        shards = _shards_listed_in(sub / index_name, input_name)
        missing = sorted(shards - files)
        if missing:
            raise _missing_weights(input_name, folder.name, shown, missing, f"listed in {shown}{index_name}")
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = sorted(f for f in files if Path(f).suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnusableFolderError(input_name, folder.name,
                                  f"{shown} has weights only in pickle format ({', '.join(pickles)})",
                                  "weights are loaded only from .safetensors files; use the safetensors release "
                                  "of this model", label=UNSUPPORTED)
    # config.json is there but the weights are not: a file deleted, moved or never finished copying.
    expected = WEIGHTS_FILE.get(library, "*.safetensors")
    raise _missing_weights(input_name, folder.name, shown, [expected], "its config.json is there")


def _missing_weights(input_name: str, folder_name: str, shown: str, missing: list[str],
                     evidence: str) -> UnusableFolderError:
    """`shown`: the component's folder as the message names it, relative to the model ("vae/")."""
    listed = ", ".join(f"{shown}{f}" for f in missing[:3]) + (f" and {len(missing) - 3} more"
                                                              if len(missing) > 3 else "")
    return UnusableFolderError(
        input_name, folder_name, f"weights file missing: {listed} ({evidence})",
        f"restore the missing file{'s' if len(missing) > 1 else ''} into {folder_name}/{shown} (copy it "
        "back, or re-download it from the model's source), then refresh", label=BROKEN_WEIGHTS)


def _shards_listed_in(index_file: Path, input_name: str) -> set[str]:
    weight_map = _read_json(index_file, input_name).get("weight_map")
    if not isinstance(weight_map, dict):
        raise UnusableFolderError(input_name, str(index_file), f"{index_file.name} has no weight_map", RECOPY,
                                  label=BROKEN_CONFIG)
    return {str(shard) for shard in weight_map.values()}


def folder_label(path: str | Path) -> str | None:
    """None for a usable model folder, else a few words for the model list (e.g. "broken: weights
    missing"). Cheap and cached (see inspect_model_folder)."""
    try:
        inspect_model_folder(path, "model_name")
    except UnusableFolderError as exc:
        return exc.label
    except OmniInputError:
        return BROKEN_FILES
    return None


def _read_json(path: Path, input_name: str, fix: str = RECOPY) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UnusableFolderError(input_name, str(path.parent), f"{path.name} is missing", fix) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnusableFolderError(input_name, str(path), f"{path.name} is not valid JSON ({exc})", fix,
                                  label=BROKEN_CONFIG) from None
    if not isinstance(data, dict):
        raise UnusableFolderError(input_name, str(path), f"{path.name} does not hold a JSON object", fix,
                                  label=BROKEN_CONFIG)
    return data
