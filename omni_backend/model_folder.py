"""Check a diffusers model folder and read its configs, without touching any weights.

Load Omni Model calls this, so a wrong folder fails at the loader node, in milliseconds, with a
message that names the file that is missing. It also refuses folders that would make diffusers
import code from outside diffusers/transformers (a model_index.json naming a custom module is
remote code by another name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import OmniInputError
from .families import FAMILIES, ModelFamily, family_for_pipeline

TRUSTED_LIBRARIES = {"diffusers", "transformers"}
MODEL_COMPONENT_PREFIXES = ("transformer", "vae", "text_encoder")


@dataclass(frozen=True)
class ModelFolder:
    path: str
    pipeline_class: str
    family_key: str
    components: dict = field(hash=False, compare=False)  # name -> (library, class)
    transformer_config: dict = field(hash=False, compare=False)
    vae_config: dict = field(hash=False, compare=False)
    model_index: dict = field(hash=False, compare=False)

    @property
    def family(self) -> ModelFamily:
        return FAMILIES[self.family_key]

    @property
    def name(self) -> str:
        return Path(self.path).name


def inspect_model_folder(path: str | Path, input_name: str = "model") -> ModelFolder:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise OmniInputError(input_name, str(path), "the folder does not exist",
                             "choose a model folder that contains model_index.json (diffusers format)")
    folder = folder.resolve()
    index_file = folder / "model_index.json"
    stamp = index_file.stat().st_mtime_ns if index_file.exists() else 0
    return _inspect(str(folder), stamp, input_name)


@lru_cache(maxsize=64)
def _inspect(folder_str: str, _stamp: int, input_name: str) -> ModelFolder:
    folder = Path(folder_str)
    if not folder.is_dir():
        raise OmniInputError(input_name, folder_str, "this is a file, not a diffusers model folder",
                             "single-file checkpoints are not supported; choose the folder that contains "
                             "model_index.json")
    index = _read_json(folder / "model_index.json", input_name,
                       fix="choose a folder in diffusers format (it has model_index.json at its top)")
    class_name = index.get("_class_name")
    family = family_for_pipeline(class_name) if isinstance(class_name, str) else None
    if family is None:
        supported = ", ".join(sorted(c for f in FAMILIES.values() for c in f.pipeline_classes))
        raise OmniInputError(input_name, folder.name, f"its pipeline {class_name!r} is not a supported family",
                             f"use a model whose model_index.json names one of: {supported}")

    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, cls = entry
        if library is None or cls is None:
            continue  # optional component left empty (e.g. SD3's image_encoder)
        if library not in TRUSTED_LIBRARIES:
            raise OmniInputError(input_name, folder.name,
                                 f"component {name!r} comes from {library!r}, which would run code shipped "
                                 "with the model",
                                 "only diffusers/transformers components are loaded; use an official folder")
        _check_component(folder, name, cls, input_name)
        components[name] = (library, cls)

    for required in family.transformer_components[:1] + ("vae", "scheduler"):
        if required not in components:
            raise OmniInputError(input_name, folder.name, f"model_index.json lists no {required!r} component",
                                 f"use a complete {family.title} folder")

    return ModelFolder(
        path=str(folder), pipeline_class=class_name, family_key=family.key, components=components,
        transformer_config=_read_json(folder / "transformer" / "config.json", input_name),
        vae_config=_read_json(folder / "vae" / "config.json", input_name), model_index=index,
    )


def _check_component(folder: Path, name: str, cls: str, input_name: str) -> None:
    sub = folder / name
    if not sub.is_dir():
        raise OmniInputError(input_name, folder.name, f"the {name}/ subfolder ({cls}) is missing",
                             "re-download or copy the whole model folder")
    if name.startswith(MODEL_COMPONENT_PREFIXES):
        if not (sub / "config.json").is_file():
            raise OmniInputError(input_name, folder.name, f"{name}/config.json is missing",
                                 "re-download or copy the whole model folder")
        if not any(sub.glob("*.safetensors")):
            other = sorted(p.name for p in sub.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
            problem = (f"{name}/ has weights only in pickle format ({', '.join(other)})" if other
                       else f"{name}/ has no .safetensors weights")
            raise OmniInputError(input_name, folder.name, problem,
                                 "weights are loaded only from .safetensors files; use the safetensors release "
                                 "of this model")
    elif name == "scheduler" and not (sub / "scheduler_config.json").is_file():
        raise OmniInputError(input_name, folder.name, "scheduler/scheduler_config.json is missing",
                             "re-download or copy the whole model folder")


def _read_json(path: Path, input_name: str, fix: str = "re-download or copy the whole model folder") -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise OmniInputError(input_name, str(path.parent), f"{path.name} is missing", fix) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OmniInputError(input_name, str(path), f"{path.name} is not valid JSON ({exc})", fix) from None
    if not isinstance(data, dict):
        raise OmniInputError(input_name, str(path), f"{path.name} does not hold a JSON object", fix)
    return data
