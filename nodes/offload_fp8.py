"""Offload/FP8: CPU offload (model-level or layerwise) and FP8 weights, as a MemoryConfig on the spec."""

from __future__ import annotations

from omni_backend.memory import FP8_CHOICES, OFFLOAD_CHOICES, MemoryConfig
from omni_backend.memory.config import MAX_BLOCKS_ON_DEVICE, MAX_BUDGET_GB

from .common import MODEL_IN_TOOLTIP, ModelFeatureNode, OMNI_MODEL


class OmniOffloadFP8(ModelFeatureNode):
    DESCRIPTION = ("Save device memory: offload weights to the CPU (whole components taking turns, or DiT blocks "
                   "streamed a few at a time) and/or store the DiT's attention and MLP weights in FP8. "
                   "Changing these reloads the model; outputs of offload equal the plain run.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (OMNI_MODEL, {"tooltip": MODEL_IN_TOOLTIP}),
            "offload": (list(OFFLOAD_CHOICES), {
                "default": "none",
                "tooltip": "model: text encoder, DiT(s) and VAE take turns on the device. layerwise: only "
                           "blocks_on_device DiT blocks are on the device, the next one copied in while one runs. "
                           "auto: picks from free device memory and model size."}),
            "blocks_on_device": ("INT", {
                "default": 2, "min": 1, "max": MAX_BLOCKS_ON_DEVICE,
                "tooltip": "Layerwise offload: DiT blocks resident at once (the running one included)."}),
            "fp8": (list(FP8_CHOICES), {
                "default": "off",
                "tooltip": "weight_only: FP8 weights with per-channel scales, computed in the model's dtype (any "
                           "device). w8a8: FP8 activations too, on GPUs with FP8 tensor cores (sm89+); elsewhere it "
                           "runs weight-only and says so. Attention/MLP and modulation linears (the latter always "
                           "weight-only); embeddings, input/output projections and norms stay in full precision."}),
            "fp8_text_encoder": ("BOOLEAN", {
                "default": False, "tooltip": "Also store the text encoder's layer weights in FP8 (weight-only)."}),
        }, "optional": {
            # Optional and last: workflows saved before it load with its default (graph/workflow_format.py).
            "device_budget_gb": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": float(MAX_BUDGET_GB), "step": 0.5,
                "tooltip": "Layerwise or auto offload: GB of device memory the weights may take. The pack keeps "
                           "as many DiT blocks resident as fit beside the text encoder, VAE and the DiT's other "
                           "parts, and says what it chose (auto also picks none/model/layerwise from it). "
                           "Activations need room on top (about 2 GB at 1024 px). 0: blocks_on_device decides."}),
        }}

    # No VALIDATE_INPUTS on purpose: fp8_text_encoder without an fp8 mode is a fault of two inputs, and
    # ComfyUI reports a failing VALIDATE_INPUTS once per input it names. MemoryConfig in apply() raises
    # it once, before any weights load; ComfyUI's own list/range checks of its inputs stay on.

    def apply(self, model, offload, blocks_on_device, fp8, fp8_text_encoder, device_budget_gb=0.0):
        config = MemoryConfig(offload=offload, blocks_on_device=int(blocks_on_device), fp8=fp8,
                              fp8_text_encoder=bool(fp8_text_encoder), device_budget_gb=device_budget_gb)
        # All off is the plain model: it shares the plain model's loaded weights.
        return (model.replace(memory=None if config.is_noop else config),)
