"""The only place that talks to ComfyUI's services, with a headless stand-in for outside ComfyUI.

Inside ComfyUI: folder_paths for model folders, comfy.utils.ProgressBar for progress,
comfy.model_management for interrupts. Outside (tests, `omni-diffusion run`), `HEADLESS` plays
those roles: a models directory laid out like ComfyUI's `models/`, a printed progress line and a
flag that asks the run to stop.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

try:  # ComfyUI's modules exist only inside a ComfyUI process.
    import folder_paths as _folder_paths  # type: ignore
except ImportError:
    _folder_paths = None
try:
    import comfy.model_management as _model_management  # type: ignore
    import comfy.utils as _comfy_utils  # type: ignore
except ImportError:
    _model_management = None
    _comfy_utils = None

try:
    from comfy_execution.graph_utils import ExecutionBlocker  # type: ignore
except ImportError:  # outside ComfyUI (and before ComfyUI had it there)
    try:
        from comfy_execution.graph import ExecutionBlocker  # type: ignore
    except ImportError:
        class ExecutionBlocker:
            """The headless stand-in of ComfyUI's: a node given one as input stops with its message."""

            def __init__(self, message):
                self.message = message

IN_COMFYUI = _folder_paths is not None


@dataclass
class HeadlessHost:
    """What ComfyUI's folders and flags would be, for runs outside ComfyUI."""

    models_dir: Path = field(default_factory=lambda: Path(os.environ.get("OMNI_MODELS_DIR", "models")))
    output_dir: Path = field(default_factory=lambda: Path("output"))
    input_dir: Path = field(default_factory=lambda: Path("input"))
    stop: threading.Event = field(default_factory=threading.Event)
    progress_log: list = field(default_factory=list)
    written: list = field(default_factory=list)  # files the output nodes wrote in this run
    show_progress: bool = False

    def folder(self, kind: str) -> list[Path]:
        return [self.models_dir / kind]


HEADLESS = HeadlessHost()


# ---- model folders -------------------------------------------------------------------------
def model_roots(kind: str) -> list[Path]:
    """Folders configured for `kind` ("diffusers", "loras"), including extra_model_paths."""
    if IN_COMFYUI:
        try:
            return [Path(p) for p in _folder_paths.get_folder_paths(kind)]
        except KeyError:
            return []
    return HEADLESS.folder(kind)


MAX_FOLDER_DEPTH = 12


def walk_folders(root: Path):
    """Like os.walk(followlinks=True) (users link model folders in, one model under several names),
    but a folder that is its own ancestor through a link is not entered again, and the walk stops
    MAX_FOLDER_DEPTH levels down: a link back up the tree cannot hang the lists. Clearing `dirs`
    prunes, as with os.walk."""
    pending = [(str(root), frozenset(), 0)]
    while pending:
        current, ancestors, depth = pending.pop()
        try:
            stat = os.stat(current)
            entries = list(os.scandir(current))
        except OSError:
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in ancestors:
            continue
        dirs = sorted(e.name for e in entries if _is_folder(e))
        files = sorted(e.name for e in entries if not _is_folder(e))
        yield current, dirs, files
        if depth + 1 < MAX_FOLDER_DEPTH:
            pending.extend((os.path.join(current, name), ancestors | {key}, depth + 1) for name in reversed(dirs))


def _is_folder(entry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def list_model_folders() -> list[str]:
    """Diffusers folders (they hold model_index.json) under every configured diffusers root."""
    names: set[str] = set()
    for root in model_roots("diffusers"):
        if not root.is_dir():
            continue
        for current, dirs, files in walk_folders(root):
            if "model_index.json" in files:
                names.add(Path(current).relative_to(root).as_posix())
                dirs.clear()  # a model's subfolders are its components, not more models
    return sorted(names)


def list_files(kind: str, suffixes: tuple[str, ...]) -> list[str]:
    names: set[str] = set()
    for root in model_roots(kind):
        if root.is_dir():
            for current, _dirs, files in walk_folders(root):
                for name in files:
                    path = Path(current) / name
                    if path.suffix.lower() in suffixes and path.is_file():
                        names.add(path.relative_to(root).as_posix())
    return sorted(names)


def resolve_in_roots(kind: str, name: str, input_name: str, must_exist: str | None = None) -> Path:
    """Find `name` inside the configured roots of `kind`; never outside them."""
    from omni_backend.errors import OmniInputError

    relative = Path(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise OmniInputError(input_name, name, f"names are resolved only inside the {kind} model folders",
                             f"pick a name from the list of models/{kind}")
    roots = model_roots(kind)
    for root in roots:
        candidate = root / relative
        if candidate.exists() and (must_exist is None or (candidate / must_exist).exists()):
            return candidate
    where = ", ".join(str(r) for r in roots) or f"models/{kind}"
    raise OmniInputError(input_name, name, f"not found in {where}",
                         f"put it under models/{kind} (or an extra_model_paths entry) and refresh")


def tokenizer_dirs() -> tuple[str, ...]:
    """Where ComfyUI keeps its text encoders' tokenizer files (comfy/text_encoders/<name>_tokenizer):
    the running ComfyUI's, or, headless, those of the ComfyUI install whose models/ folder we read."""
    if IN_COMFYUI:
        import comfy  # type: ignore

        # ComfyUI's `comfy` folder has no __init__.py: a namespace package, whose __file__ is None.
        # Its __path__ is the folder (a list of one, or more if other installs extend the namespace).
        root = Path(next(iter(comfy.__path__)))
    else:
        root = HEADLESS.models_dir.resolve().parent / "comfy"
    # comfy/text_encoders/ holds e.g. t5_tokenizer and qwen25_tokenizer; CLIP's is comfy/sd1_tokenizer.
    candidates = [root / "text_encoders", root]
    return tuple(str(c) for c in candidates if c.is_dir())


# ---- progress and interrupt ----------------------------------------------------------------
class Progress:
    """progress(step, total) for the backend, feeding ComfyUI's progress bar when present."""

    def __init__(self, total: int, node_id: str | None = None):
        self.bar = _comfy_utils.ProgressBar(total, node_id=node_id) if _comfy_utils is not None else None

    def __call__(self, step: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update_absolute(step, total)
        else:
            HEADLESS.progress_log.append((step, total))
            if HEADLESS.show_progress:
                print(f"\r  step {step}/{total}", end="\n" if step == total else "", flush=True)


def calibration_file() -> Path | None:
    """Where quality targets' thresholds are kept across restarts: ComfyUI's user folder (outside
    ComfyUI: OMNI_CALIBRATION_FILE, read by the engine, or this process only)."""
    if IN_COMFYUI:
        return Path(_folder_paths.get_user_directory()) / "omni_diffusion" / "cache-calibrations.json"
    return None


def interrupt_requested() -> bool:
    if _model_management is not None:
        return bool(_model_management.processing_interrupted())
    return HEADLESS.stop.is_set()


def raise_interrupted(original: Exception) -> None:
    """Turn the backend's OmniInterrupted into the host's own interrupt exception."""
    if _model_management is not None:
        raise _model_management.InterruptProcessingException() from original
    raise original


def on_unload(callback) -> None:
    """Run `callback` when ComfyUI unloads models ("Unload models" / POST /free)."""
    if _model_management is None:
        return
    original = _model_management.unload_all_models
    if getattr(original, "_omni_wrapped", False):
        return

    def unload_all_models(*args, **kwargs):
        try:
            callback()
        except Exception:  # freeing our cache must never stop ComfyUI from freeing its own
            logging.getLogger("omni_diffusion").exception("could not unload Omni models")
        return original(*args, **kwargs)

    unload_all_models._omni_wrapped = True
    _model_management.unload_all_models = unload_all_models


def on_free_memory(callback) -> None:
    """Let ComfyUI's memory management reach the pack's models, which it does not list among its own:
    when it frees memory on a device for a model of its own (`free_memory`, called before every core
    model loads) and, after unloading its own models, still has less free than it needs, it calls
    `callback(device)`, which unloads ours there (True when it freed something)."""
    if _model_management is None:
        return
    original = _model_management.free_memory
    if getattr(original, "_omni_wrapped", False):
        return

    def free_memory(memory_required, device, *args, **kwargs):
        unloaded = original(memory_required, device, *args, **kwargs)
        try:
            if _model_management.get_free_memory(device) < memory_required and callback(str(device)):
                logging.getLogger("omni_diffusion").info("unloaded Omni models to free %.1f GB on %s for ComfyUI",
                                                        memory_required / 2**30, device)
                _model_management.soft_empty_cache()
        except Exception:  # freeing ours must never stop ComfyUI from loading its own
            logging.getLogger("omni_diffusion").exception("could not unload Omni models")
        return unloaded

    free_memory._omni_wrapped = True
    _model_management.free_memory = free_memory


def make_room(bytes_needed: int, device: str) -> None:
    """Before a model of ours loads: ask ComfyUI to free `bytes_needed` on its device, unloading its own
    models first as it does before loading one of them."""
    if _model_management is None or bytes_needed <= 0:
        return
    import torch

    target = _model_management.get_torch_device() if device == "auto" else torch.device(device)
    _model_management.free_memory(bytes_needed, target)


def blocked(message: str):
    """An output value that stops whatever node consumes it, with `message` as the error (ComfyUI's way
    for a node whose outputs depend on the model: the other output must not silently carry nothing)."""
    return ExecutionBlocker(message)


# ---- the server log ------------------------------------------------------------------------
class _RefusalTracebackFilter(logging.Filter):
    """ComfyUI logs every exception a node raises twice: "!!! Exception during processing !!! <message>"
    and then the whole traceback, both at ERROR. For a refusal (bad input, features that cannot be
    combined) the message is the whole story and the traceback is noise in the user's log, so the
    traceback goes to DEBUG; bugs and worker failures keep theirs. ComfyUI logs the traceback from
    inside its `except` block, so the exception being handled is the one the traceback shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        from omni_backend.errors import OmniIncompatibleError, OmniInputError

        handled = sys.exc_info()[1]
        if (record.levelno < logging.ERROR or not isinstance(handled, (OmniInputError, OmniIncompatibleError))
                or not str(record.msg).startswith("Traceback")):
            return True
        logging.getLogger("omni_diffusion").debug("refusal traceback:\n%s", record.getMessage())
        return False


def quiet_refusal_tracebacks() -> None:
    """Inside ComfyUI: a refusal is one line in the server log (the traceback at debug level)."""
    if not IN_COMFYUI:
        return
    root = logging.getLogger()
    if not any(isinstance(f, _RefusalTracebackFilter) for f in root.filters):
        root.addFilter(_RefusalTracebackFilter())
