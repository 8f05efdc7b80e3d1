"""The pack's graph nodes. Import this package relatively only: ComfyUI owns the name `nodes`."""

from __future__ import annotations

from omni_backend.engine import default_engine

from . import check_route, comfy_bridge
from .load_lora import OmniLoadLoRA
from .cache_nodes import OmniApplyCacheDiT, OmniApplyTeaCache
from .compile_node import OmniCompile
from .load_model import OmniLoadModel
from .load_model_files import OmniLoadModelFiles
from .offload_fp8 import OmniOffloadFP8
from .parallel_config import OmniParallelConfig
from .sample import OmniSample
from .vae_decode import OmniVAEDecode

NODE_CLASSES = {
    "OmniLoadModel": (OmniLoadModel, "Load Omni Model"),
    "OmniLoadModelFiles": (OmniLoadModelFiles, "Load Omni Model (ComfyUI files)"),
    "OmniApplyTeaCache": (OmniApplyTeaCache, "Apply TeaCache"),
    "OmniApplyCacheDiT": (OmniApplyCacheDiT, "Apply Cache-DiT"),
    "OmniParallelConfig": (OmniParallelConfig, "Parallel Config"),
    "OmniLoadLoRA": (OmniLoadLoRA, "Load Omni LoRA"),  # core LoraLoader is "Load LoRA"
    "OmniOffloadFP8": (OmniOffloadFP8, "Offload/FP8"),
    "OmniCompile": (OmniCompile, "Compile DiT Blocks"),
    "OmniSample": (OmniSample, "Sample"),
    "OmniVAEDecode": (OmniVAEDecode, "VAE Decode Patch-Parallel"),
}

NODE_CLASS_MAPPINGS = {node_id: cls for node_id, (cls, _title) in NODE_CLASSES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: title for node_id, (_cls, title) in NODE_CLASSES.items()}

# ComfyUI's "Unload models" (and POST /free) also frees the pipelines this pack holds.
comfy_bridge.on_unload(lambda: default_engine().unload_all())
# A refusal is one line in ComfyUI's log, not a traceback.
comfy_bridge.quiet_refusal_tracebacks()
# POST /omni_diffusion/check for the browser extension (web/), inside ComfyUI only.
check_route.register()
