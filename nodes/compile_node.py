"""Compile DiT Blocks: regional torch.compile of the DiT's repeated blocks, as a CompileConfig on the spec."""

from __future__ import annotations

from omni_backend.compile import CompileConfig
from omni_backend.compile.config import BACKENDS

from .common import MODEL_IN_TOOLTIP, ModelFeatureNode, OMNI_MODEL


class OmniCompile(ModelFeatureNode):
    DESCRIPTION = ("Compile the DiT's repeated transformer blocks with torch.compile (diffusers' "
                   "compile_repeated_blocks): the first run at a size pays the compile, later runs are faster. "
                   "Works with the caches, LoRA (a strength change does not recompile), offload and every "
                   "parallel layout; never reloads the model.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (OMNI_MODEL, {"tooltip": MODEL_IN_TOOLTIP}),
            "backend": (list(BACKENDS), {
                "default": "inductor",
                "tooltip": "inductor: generated kernels (fastest; on the CPU it needs a C++ compiler). "
                           "aot_eager / eager: capture the graphs without generating code (to check a model "
                           "compiles, or when inductor is not available)."}),
        }}

    def apply(self, model, backend):
        return (model.replace(compile=CompileConfig(backend=backend)),)
