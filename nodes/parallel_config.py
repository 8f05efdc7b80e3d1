"""Parallel Config: run the model on a group of worker processes (GPUs, or CPU processes)."""

from __future__ import annotations

from omni_backend.parallel.config import ParallelConfig

from .common import MODEL_IN_TOOLTIP, ModelFeatureNode, OMNI_MODEL


def parse_devices(text: str) -> tuple[str, ...]:
    text = (text or "").strip()
    if text in ("", "auto"):
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


class OmniParallelConfig(ModelFeatureNode):
    DESCRIPTION = ("Split each step across worker processes, one per device: Ulysses and Ring sequence "
                   "parallelism, CFG-parallel (positive/negative branch per device), tensor parallelism. "
                   "World size = ulysses x ring x cfg x tensor_parallel.")

    @classmethod
    def INPUT_TYPES(cls):
        degree = {"default": 1, "min": 1, "max": 64}
        return {"required": {
            "model": (OMNI_MODEL, {"tooltip": MODEL_IN_TOOLTIP}),
            "ulysses_degree": ("INT", dict(degree, tooltip="All-to-all over attention heads (must divide them).")),
            "ring_degree": ("INT", dict(degree, tooltip="K/V passed around a ring: any head count.")),
            "cfg_parallel": ("INT", {"default": 1, "min": 1, "max": 2,
                                     "tooltip": "2: positive and negative branch on different devices."}),
            "tensor_parallel": ("INT", dict(degree, tooltip="Shard the DiT's weights across devices.")),
            "vae_patch_parallel": ("INT", dict(degree, tooltip="Decode VAE tiles on this many ranks.")),
            "devices": ("STRING", {"default": "auto",
                                   "tooltip": "auto (all visible GPUs, else CPU processes) or e.g. cuda:0,cuda:1"}),
            "remote_ranks": ("INT", {"default": 0, "min": 0, "max": 63,
                                     "tooltip": "Ranks started on other machines with omni-diffusion worker. They must "
                                                "hold the same OMNI_WORKER_SECRET as this ComfyUI (set in both "
                                                "environments; refused when absent)."}),
            "rendezvous": ("STRING", {"default": "",
                                      "tooltip": "HOST:PORT for remote ranks to reach this machine (listened "
                                                 "on only while the group forms; nothing answers there without "
                                                 "OMNI_WORKER_SECRET); empty = local ranks only, on 127.0.0.1."}),
        }}

    # No VALIDATE_INPUTS on purpose. ComfyUI turns a failing VALIDATE_INPUTS into one error per input
    # the function names (execution.py, validate_inputs), and a layout can only be judged from all
    # eight values at once: one impossible layout showed up eight times. apply() builds the
    # ParallelConfig, which raises one error naming the input to change; the node only builds a spec
    # (milliseconds, no weights), so that error still comes before anything loads. ComfyUI keeps
    # checking each degree's min/max itself, which a VALIDATE_INPUTS naming them turns off.

    def apply(self, model, devices, **degrees):
        config = ParallelConfig(devices=parse_devices(devices), **degrees)
        return (model.replace(parallel=config if config.world_size > 1 else None),)
