"""The engine: loaded pipelines, runs and decodes, in this process or on a worker group.

Nodes and the `Omni` facade both talk to an Engine. World size 1 runs here (`LocalRunner`); a
larger layout runs on worker processes (`workers.group`), each of which runs its share with its
own LocalRunner. Everything a feature changes for one run is undone when the run ends, so a
cached pipeline is always the plain model plus its weight-level features (dtype, FP8, offload,
parallel layout).
"""

from __future__ import annotations

import logging
import os
import threading

import torch

from .cache import calibration
from .errors import OmniInputError
from .request import GenerationRequest
from .run.runner import DecodeSettings, Generation, LocalRunner
from .run.sampling import RunControl
from .system.devices import resolve_device
from .weights.pipeline_cache import LoadedPipeline

__all__ = ["DecodeSettings", "Engine", "Generation", "default_engine"]
log = logging.getLogger("omni_diffusion")


class Engine:
    def __init__(self, max_loaded: int = 1):
        self.runner = LocalRunner(max_loaded)
        self.pipelines = self.runner.pipelines
        self._lock = threading.RLock()  # one run at a time per engine (ComfyUI runs prompts serially)
        self._groups = None  # GroupExecutor, created on the first multi-process run
        self.calibrations = calibration.Calibrations()  # quality targets' thresholds, found once per model/shape

    # ---- public --------------------------------------------------------------------------
    def generate(self, spec, request: GenerationRequest, control: RunControl | None = None) -> Generation:
        request = request.validate_images(spec.family).validate_model_inputs(spec.family, spec.model_folder)
        request = request.validate_conditioning(spec.model_folder)
        control = control or RunControl()
        with self._lock:
            control.check_interrupt()
            if spec.cache is not None and spec.cache.target_db:
                return self._generate_to_target(spec, request, control)
            return self._generate(spec, request, control)

    def decode(self, spec, latents, settings: DecodeSettings = DecodeSettings()):
        """Raw latents (ComfyUI layout) -> pixels in [0, 1], `[B,3,H,W]` or `[B,3,F,H,W]`."""
        return self.decode_with_report(spec, latents, settings)[0]

    def decode_with_report(self, spec, latents, settings: DecodeSettings = DecodeSettings()):
        """(pixels, RunReport): the report says how the decode was split and its memory per rank."""
        with self._lock:
            if spec.world_size() == 1:
                return self.runner.decode(spec, latents, settings)
            return self._group_for(spec, RunControl()).decode(spec, latents, settings)

    def loaded(self, spec) -> LoadedPipeline:
        return self.runner.loaded(spec)

    def unload_all(self) -> None:
        """Free every loaded pipeline and end the worker processes (their sockets and folders too)."""
        with self._lock:
            self.runner.unload_all()
            if self._groups is not None:
                self._groups.shutdown()

    def bytes_to_load(self, spec) -> int:
        """The size of the weights files loading `spec` in this process would read; 0 when it is loaded
        (or loads in worker processes). The host makes that much room first."""
        if spec.world_size() > 1 or spec.weights_key() in self.runner.pipelines.keys():
            return 0
        return sum(size for _path, size, _mtime in calibration.weights_fingerprint(spec))

    def unload_from(self, device: str) -> bool:
        """Free everything this engine holds on that kind of device ("cuda", "cpu"; worker groups count
        as holding every kind): the host's memory management asks when it needs room for a model of its
        own. True when something was freed."""
        kind = torch.device(device).type
        with self._lock:
            held = {torch.device(resolve_device(key[3])).type for key in self.runner.pipelines.keys()}
            group = self._groups.group if self._groups is not None else None
            if kind not in held and (group is None or group.closed):
                return False
            self.unload_all()
            return True

    # ---- internals -----------------------------------------------------------------------
    def _generate(self, spec, request, control) -> Generation:
        if spec.world_size() == 1:
            return self.runner.generate(spec, request, control)
        return self._group_for(spec, control).generate(spec, request, control)

    def _generate_to_target(self, spec, request, control) -> Generation:
        """A cache with a quality target: its threshold from an earlier calibration for this model and
        shape, or from one made now on this request (calibration.py)."""
        cache = spec.cache
        problem = calibration.refusal(cache, request)
        if problem is not None:
            raise problem
        key = self.calibrations.key(spec, request)  # once: it reads the weights files' sizes and times
        found = self.calibrations.get(key)
        reused = found is not None
        if found is None:
            found = calibration.calibrate(self._generate, lambda s, latents: self.decode(s, latents), spec,
                                          request, control)
            self.calibrations.put(key, found)
        run_spec = spec.replace(cache=cache.with_threshold(found.threshold) if found.threshold else None)
        result = self._generate(run_spec, request, calibration.final_control(control) if not reused else control)
        result.report.add("Quality target", {"text": found.text(cache, cache.target_db, reused), "reused": reused,
                                             "threshold": found.threshold, "psnr_db": found.psnr_db,
                                             "runs": 0 if reused else found.runs, "tried": list(found.tried)})
        return result

    def _group_for(self, spec, control):
        if self._groups is None:
            from .workers.group import GroupExecutor

            self._groups = GroupExecutor()
        return self._groups.for_spec(spec, control)


_default_engine: Engine | None = None
_default_engine_lock = threading.Lock()


def default_engine() -> Engine:
    """The process-wide engine the nodes share (one pipeline cache for the whole ComfyUI)."""
    global _default_engine
    with _default_engine_lock:
        if _default_engine is None:
            _default_engine = Engine(max_loaded=max_loaded_from_environment())
            # Where quality targets' thresholds are kept across runs of the CLI or a script (ComfyUI's
            # user folder inside ComfyUI: the nodes set it); unset, they last for this process.
            _default_engine.calibrations.use_file(os.environ.get("OMNI_CALIBRATION_FILE") or None)
        return _default_engine


def max_loaded_from_environment() -> int:
    text = os.environ.get("OMNI_MAX_LOADED_MODELS", "1").strip()
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise OmniInputError("OMNI_MAX_LOADED_MODELS", text, "must be a whole number from 1 to 64 (how many "
                             "models stay loaded at once)", "set it to 1 (the default) or unset it")
    return int(text)
