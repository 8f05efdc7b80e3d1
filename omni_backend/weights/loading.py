"""Loading a pipeline's weights from a checked model folder: local files, safetensors, no remote code."""

from __future__ import annotations

import logging
import os

from ..errors import OmniInputError
from ..single_file.model_files import load_pipeline_from_files
from ..system.devices import torch_dtype
from ..system.process_lock import process_lock
from .model_folder import TRUSTED_LIBRARIES

log = logging.getLogger("omni_diffusion")


def load_pipeline(spec):
    """Build the diffusers pipeline for `spec` (weights only; features are applied by the engine)."""
    import torch

    info = spec.model_folder
    family = spec.family
    pipeline_class = family.pipeline_class(info.pipeline_class)
    log.info("loading %s (%s, %s) on %s", info.name, family.title, spec.dtype, spec.device)
    try:
        # diffusers and transformers build models under context managers that patch torch for the whole
        # process (meta-device init, skipped init, default dtype): see process_lock.py.
        with process_lock():
            if spec.files is not None:
                pipe = load_pipeline_from_files(spec.files, info, torch_dtype(spec.dtype))
            else:
                pipe = pipeline_class.from_pretrained(
                    info.path,
                    dtype=torch_dtype(spec.dtype),
                    local_files_only=True,  # never reach for a hub: a missing file is an error, not a download
                    use_safetensors=True,
                    trust_remote_code=False,
                    **load_shared_components(info, torch_dtype(spec.dtype)),
                    **family.load_kwargs(info),
                )
    except OmniInputError:
        raise  # already names the input, the file and the fix
    except (OSError, ValueError) as exc:
        if spec.files is not None:  # ComfyUI's single files: there is no folder to complete
            raise OmniInputError("diffusion_model", info.name, f"the model could not be built from its files "
                                 f"({exc})", "use the release's original files (diffusion model, text encoders "
                                 "and VAE of one model, as its ComfyUI template lists them)") from exc
        raise OmniInputError("model", info.name, f"diffusers could not load it ({exc})",
                             "check that the folder is a complete diffusers model") from exc
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            refuse_unloaded_weights(info, name, component)
            component.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    if spec.memory is None or not getattr(spec.memory, "keeps_weights_off_device", False):
        pipe.to(spec.device)
    return pipe


def load_shared_components(info, dtype) -> dict:
    """The components the folder keeps in a folder beside it (model_folder's `_omni_shared_components`),
    loaded from there: diffusers builds a pipeline around components passed in and reads no subfolder
    for them."""
    import importlib

    loaded = {}
    for name, path in info.shared.items():
        library, class_name = info.components[name]
        package = library if library in TRUSTED_LIBRARIES else f"diffusers.pipelines.{library}"
        module = importlib.import_module(package)
        loaded[name] = getattr(module, class_name).from_pretrained(
            path, dtype=dtype, local_files_only=True, use_safetensors=True)
    return loaded


def refuse_unloaded_weights(info, name: str, module) -> None:
    """A weights file whose tensor names do not match its config loads without an error: diffusers
    leaves the unmatched parameters on the meta device and the run fails later with "Cannot copy out
    of meta tensor". Name the file and a few missing tensors instead, before anything runs."""
    missing = [key for key, tensor in (*module.named_parameters(), *module.named_buffers()) if tensor.is_meta]
    if not missing:
        return
    folder = info.component_path(name)
    files = ", ".join(sorted(p.name for p in folder.glob("*.safetensors"))) or "(no .safetensors file)"
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    raise OmniInputError("model", info.name, f"{name}/{files} holds no weights for {len(missing)} tensors its "
                         f"config declares ({shown}): the file does not belong to {name}/config.json",
                         f"restore {name}/ from the model's original release (weights and config together)")


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
