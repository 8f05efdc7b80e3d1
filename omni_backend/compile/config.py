"""CompileConfig: regional torch.compile of the DiT's repeated blocks (the Compile DiT Blocks node).

diffusers' `compile_repeated_blocks` compiles each block whose class the transformer lists in
`_repeated_blocks` (`block.compile(...)`): all blocks of a class share one compiled graph, so the
compile costs about one block's worth, not the whole model's. It is a runtime feature, like the
caches: the blocks are compiled for the run (`block.compile` just sets a wrapper) and plain again
after it, so a pipeline loaded once serves runs with and without it, and nothing leaks. Dynamo's
cache of compiled graphs lives with the code, not the wrapper, so the next run reuses the graphs;
they are compiled again only when what they were specialised on changes (input shapes: a new
image size; after that first change Dynamo marks the changed sizes dynamic).

Why this composes:
- LoRA: a run's adapters are fused into the weights (lora/fusing.py), and parameters are graph
  inputs (torch's default `inline_inbuilt_nn_modules`), so a strength change changes tensor
  values only: no recompile (tested with Dynamo's counters). Unfused adapters (FP8 layers) keep
  their strength as a Python float on the layer, which Dynamo may specialise on (not measured).
- TeaCache, Cache-DiT, offload and the parallel methods act around blocks (hooks on a block, or
  collectives inside attention): Dynamo traces through the hook code or breaks the graph at what it
  cannot trace (a cache decision, a collective), and runs those parts eagerly. Output equals the
  eager run within float tolerance.

Backends: "inductor" (torch's default; on the CPU it needs a C++ compiler, here gcc 12),
"aot_eager" (the same graph capture and autograd tracing, no code generation: checks that a model
compiles without paying inductor's compile time) and "eager" (Dynamo's graph capture only).
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
from dataclasses import dataclass

from ..errors import OmniInputError
from ..rules.compat import alternative, define_rule

BACKENDS = ("inductor", "aot_eager", "eager")

NO_REPEATED_BLOCKS = define_rule(
    "compile.repeated_blocks", ("compile", "family"),
    "regional compile needs the transformer to name its repeated blocks (`_repeated_blocks`)",
    first="Compile DiT Blocks", second="{family}",
    reason="its transformer ({transformer}) does not name its repeated blocks, which regional compile compiles",
    fix="remove the Compile DiT Blocks node for this model")


def _transformer_class(spec):
    library, class_name = spec.model_folder.components.get(spec.family.transformer_components[0], (None, None))
    if library is None:
        return None, None
    try:
        return class_name, getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError):
        return class_name, None


@dataclass(frozen=True)
class CompileConfig:
    backend: str = "inductor"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise OmniInputError("backend", self.backend, "unknown torch.compile backend",
                                 f"choose one of {', '.join(BACKENDS)}")

    RULES = (NO_REPEATED_BLOCKS,)

    def problems(self, spec) -> list:
        name, cls = _transformer_class(spec)
        if cls is not None and not getattr(cls, "_repeated_blocks", None):
            return [NO_REPEATED_BLOCKS.problem(family=spec.family.title, transformer=name,
                                               alternatives=[alternative(compile=None)])]
        return []

    def describe(self) -> str:
        return f"regional torch.compile ({self.backend})"

    @contextlib.contextmanager
    def run_session(self, ctx):
        if self.backend == "inductor" and str(ctx.spec.device).startswith("cpu") and not _cpp_compiler():
            raise OmniInputError("backend", self.backend, "inductor needs a C++ compiler on the CPU and none "
                                 "was found (g++, c++ or clang++ on PATH)",
                                 "install one (e.g. apt install g++), or choose aot_eager")
        compiled = []
        try:
            for _name, transformer in ctx.family.transformers(ctx.pipe):
                repeated = set(getattr(transformer, "_repeated_blocks", ()) or ())
                before = {id(m) for m in transformer.modules() if getattr(m, "_compiled_call_impl", None) is not None}
                transformer.compile_repeated_blocks(backend=self.backend)
                compiled += [m for m in transformer.modules()
                             if type(m).__name__ in repeated and id(m) not in before]
            ctx.report.add("Compile", {"text": f"{self.describe()}: {len(compiled)} blocks",
                                       "blocks": len(compiled), "backend": self.backend})
            yield
        finally:
            for module in compiled:
                module._compiled_call_impl = None  # what nn.Module.compile set: the block is plain again


def _cpp_compiler() -> str | None:
    return next((path for path in map(shutil.which, ("g++", "c++", "clang++")) if path), None)
