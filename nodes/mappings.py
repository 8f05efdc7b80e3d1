"""The pack's nodes: ComfyUI's two mappings, node id -> class and node id -> display name.

Apart from the package's __init__ (which also hooks the pack into ComfyUI) so that modules of the
package that need the table, such as the check route, import it without importing the package
that imports them.
"""

from __future__ import annotations

from .cache_nodes import OmniApplyCacheDiT, OmniApplyTeaCache
from .compile_node import OmniCompile
from .load_lora import OmniLoadLoRA
from .load_model import OmniLoadModel
from .load_model_files import OmniLoadModelFiles
from .offload_fp8 import OmniOffloadFP8
from .parallel_config import OmniParallelConfig
from .option_nodes import OPTION_NODES
from .sample import OmniSample, OmniSampleV2
from .vae_decode import OmniVAEDecode, OmniVAEDecodeAudio, OmniVAEDecodeImages, OmniVAEDecodeLayers

NODE_CLASSES = {
    "OmniLoadModel": (OmniLoadModel, "Load Omni Model"),
    "OmniLoadModelFiles": (OmniLoadModelFiles, "Load Omni Model (ComfyUI files)"),
    "OmniApplyTeaCache": (OmniApplyTeaCache, "Apply TeaCache"),
    "OmniApplyCacheDiT": (OmniApplyCacheDiT, "Apply Cache-DiT"),
    "OmniParallelConfig": (OmniParallelConfig, "Parallel Config"),
    "OmniLoadLoRA": (OmniLoadLoRA, "Load Omni LoRA"),  # core LoraLoader is "Load LoRA"
    "OmniOffloadFP8": (OmniOffloadFP8, "Offload/FP8"),
    "OmniCompile": (OmniCompile, "Compile DiT Blocks"),
    "OmniSampleV2": (OmniSampleV2, "Sample"),
    **OPTION_NODES,
    "OmniVAEDecodeImages": (OmniVAEDecodeImages, "VAE Decode Patch-Parallel"),
    "OmniVAEDecodeAudio": (OmniVAEDecodeAudio, "Omni VAE Decode Audio"),
    "OmniVAEDecodeLayers": (OmniVAEDecodeLayers, "Omni VAE Decode Layers"),
    # What workflows saved before the option nodes and the split decoders hold (hidden from the search).
    "OmniSample": (OmniSample, "Sample (all options, old)"),
    "OmniVAEDecode": (OmniVAEDecode, "VAE Decode (three outputs, old)"),
}

NODE_CLASS_MAPPINGS = {node_id: cls for node_id, (cls, _title) in NODE_CLASSES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: title for node_id, (_cls, title) in NODE_CLASSES.items()}
