"""OMNI_MODEL: the immutable description of a model and the features applied to it.

Nodes never mutate a spec: every Apply/Config node returns `spec.replace(...)`, which re-validates
the combination, so a bad pairing fails at the node that introduced it. Weights are not part of a
spec; the engine loads them lazily, keyed by `weights_key()`.

A feature is a frozen dataclass held in one of the fields below. The engine looks for two
optional methods on it:
- `prepare_pipeline(pipe, spec)`: weight-level work done once when the pipeline is loaded
  (FP8, offload hooks, parallel sharding). Anything it changes must be reflected in
  `weights_key()`, so specs that differ here never share a loaded pipeline.
- `run_session(ctx: RunContext)`: a context manager around one run (hooks, adapter weights,
  cache state); everything it does is undone on exit, also on errors and interrupts.
Each feature also declares the rules it can break (`RULES`, checked by `problems(spec)`; see compat.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .cache import CacheDiTConfig, TeaCacheConfig
from .compile import CompileConfig
from .families import FAMILIES, ModelFamily
from .lora.config import LoraSpec
from .memory.config import MemoryConfig
from .parallel.config import ParallelConfig
from .rules.compat import RuleDef, validate_spec
from .single_file.model_files import ModelFiles, inspect_model_files
from .system.devices import resolve_device, resolve_dtype
from .weights.model_folder import ModelFolder, inspect_model_folder

# The features a spec can hold (its fields below). Each declares the rules it can break as RULES and
# checks them in problems(spec) (see compat.py).
FEATURE_TYPES = (MemoryConfig, TeaCacheConfig, CacheDiTConfig, ParallelConfig, LoraSpec, CompileConfig)


def all_rules() -> dict[str, RuleDef]:
    """Every rule a feature declares, by id (a rule two features share is listed once)."""
    found: dict[str, RuleDef] = {}
    for feature in FEATURE_TYPES:
        for definition in feature.RULES:
            if found.setdefault(definition.id, definition) is not definition:
                raise ValueError(f"two rules share the id {definition.id!r}")
    return found


@dataclass(frozen=True)
class ModelSpec:
    folder: str  # absolute path of a diffusers model folder (for single files: the DiT's file)
    family_key: str
    dtype: str  # torch dtype name, already resolved for the device
    device: str  # "cpu" or "cuda:N", already resolved
    cache: TeaCacheConfig | CacheDiTConfig | None = None
    parallel: ParallelConfig | None = None
    memory: MemoryConfig | None = None
    loras: tuple[LoraSpec, ...] = ()  # in the order the user chained them
    files: ModelFiles | None = None  # set when the model comes from ComfyUI's single files
    compile: CompileConfig | None = None  # regional torch.compile of the DiT's blocks, per run

    @classmethod
    def from_folder(cls, folder: str, dtype: str = "auto", device: str = "auto") -> "ModelSpec":
        info = inspect_model_folder(folder)
        device = resolve_device(device)
        return cls(folder=info.path, family_key=info.family_key, dtype=resolve_dtype(dtype, device), device=device)

    @classmethod
    def from_files(cls, files: ModelFiles, dtype: str = "auto", device: str = "auto") -> "ModelSpec":
        info = inspect_model_files(files)
        device = resolve_device(device)
        return cls(folder=info.path, family_key=info.family_key, dtype=resolve_dtype(dtype, device), device=device,
                   files=files)

    @property
    def family(self) -> ModelFamily:
        return FAMILIES[self.family_key]

    @property
    def model_folder(self) -> ModelFolder:
        return inspect_model_files(self.files) if self.files is not None else inspect_model_folder(self.folder)

    @property
    def name(self) -> str:
        return self.model_folder.name

    def features(self) -> list:
        """Feature configs in the order they prepare a loaded pipeline. Memory comes after parallel:
        offload must hook and hold the modules that really run (tensor-parallel shards replace the
        linears it would otherwise have captured)."""
        return [f for f in (self.parallel, self.memory, *self.loras, self.cache, self.compile) if f is not None]

    def session_features(self) -> list:
        """Feature configs in the order their run sessions are entered. Parallel comes last so its
        CFG wrapper is the transformer's outermost forward (caches inside see one call per step).
        Compile comes after LoRA, so the blocks it compiles hold the run's fused weights."""
        return [f for f in (self.memory, *self.loras, self.cache, self.compile, self.parallel) if f is not None]

    def replace(self, **changes) -> "ModelSpec":
        return validate_spec(dataclasses.replace(self, **changes))

    def weights_key(self) -> tuple:
        """What decides the loaded weights: two specs with equal keys share one loaded pipeline."""
        memory = self.memory.weights_key() if self.memory is not None else None
        parallel = self.parallel.layout_key() if self.parallel is not None else None
        return (self.folder, self.files, self.dtype, self.device, memory, parallel)

    def world_size(self) -> int:
        return self.parallel.world_size if self.parallel is not None else 1
