"""Loading a pipeline's weights from a checked model folder: local files, safetensors, no remote code."""

from __future__ import annotations

import logging
import os

from .devices import torch_dtype
from .errors import OmniInputError

log = logging.getLogger("omni_diffusion")


def load_pipeline(spec):
    """Build the diffusers pipeline for `spec` (weights only; features are applied by the engine)."""
    import torch

    info = spec.model_folder
    family = spec.family
    pipeline_class = family.pipeline_class(info.pipeline_class)
    log.info("loading %s (%s, %s) on %s", info.name, family.title, spec.dtype, spec.device)
    try:
        pipe = pipeline_class.from_pretrained(
            info.path,
            dtype=torch_dtype(spec.dtype),
            local_files_only=True,  # never reach for a hub: a missing file is an error, not a download
            use_safetensors=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError) as exc:
        raise OmniInputError("model", info.name, f"diffusers could not load it ({exc})",
                             "check that the folder is a complete diffusers model") from exc
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    if spec.memory is None or not getattr(spec.memory, "keeps_weights_off_device", False):
        pipe.to(spec.device)
    return pipe


def offline_environment() -> None:
    """No model hub on purpose: fail fast instead of trying to download anything."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def quiet_libraries() -> None:
    """diffusers/transformers progress bars and load reports would bury our own output."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
