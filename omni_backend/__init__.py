"""Omni Diffusion engine: diffusers DiT pipelines with acceleration features, no ComfyUI needed."""

from .omni import Omni, OmniOutput  # noqa: F401
