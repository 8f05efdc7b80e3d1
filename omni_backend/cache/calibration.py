"""Caches by quality: find the threshold that keeps a run at a PSNR floor, once per model and shape.

A cache threshold means something different on every model (TeaCache's rescaled change, Cache-DiT's
residual difference), so a user may ask for a quality instead: `target_db`, the least PSNR (dB)
the cached image may have against the uncached one. On the first run with a target the engine
generates the user's request uncached, then cached at thresholds chosen by bisection (on a log
scale, where thresholds act evenly), decodes each and keeps the largest threshold whose image
meets the target. The result is kept under everything that decides it (the model and its
features, the cache settings, size, frames, steps, guidance) and reused; prompt and seed are not in
the key: a threshold found on one prompt serves the others (benchmarks/cache_speedup.py measures
held-out prompts against the targets).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import OmniInputError
from ..rules.checks import real_number
from ..run.sampling import RunControl

log = logging.getLogger("omni_diffusion")

CACHED_RUNS = 6  # at most, besides the one uncached run: the top of the range, then bisection
RANGE_RATIO = 100.0  # the bisection spans [top / RANGE_RATIO, top]: its last bracket is 100^(1/32) = 1.15 wide
# The calibration prompt must clear the target by this much: other prompts and seeds lose more or less at
# the same threshold (benchmarks/cache_speedup.py measures held-out prompts against their targets).
MARGIN_DB = 2.0
MIN_STEPS = 8  # fewer steps (a distilled schedule) leave too few to skip, and each skip costs too much


HIGHEST_TARGET = 60.0  # dB: beyond it a cached image is the uncached one in every visible way


def quality_target(value) -> float:
    """`target_db`: 0 (off: the threshold decides) or a PSNR floor in dB."""
    return real_number("target_db", value, 0.0, HIGHEST_TARGET,
                       fix="use 0 to set the threshold yourself, or a floor such as 40 (near identical), "
                           "35 (balanced) or 30 (fastest)")


@dataclass(frozen=True)
class Calibration:
    threshold: float  # 0.0 when no threshold in range met the target while skipping work
    psnr_db: float  # of the chosen threshold's image against the uncached one (inf: identical)
    skipped: float  # fraction of block computations the chosen threshold skipped on the calibration run
    runs: int  # generations it took (the uncached one included)
    tried: tuple[tuple[float, float, float], ...]  # (threshold, psnr_db, skipped) in the order tried

    def text(self, cache, target_db: float, reused: bool) -> str:
        how = "reused (calibrated earlier for this model, size and step count)" if reused else \
            f"calibrated in {self.runs} runs on this prompt"
        if self.threshold == 0.0:
            return (f"no {cache.threshold_name} up to {cache.calibration_top:g} kept {target_db + MARGIN_DB:g} dB (the "
                    f"target and a {MARGIN_DB:g} dB margin) while skipping "
                    f"work (best tried: {_best_tried(self.tried)}); ran uncached; {how}")
        return (f"{cache.threshold_name} {self.threshold:.3g} for at least {target_db:g} dB: {_db(self.psnr_db)} with "
                f"{self.skipped:.0%} of the block computations skipped on the calibration prompt (which must clear "
                f"the target by {MARGIN_DB:g} dB: other prompts lose more or less); {how}")


def _db(value: float) -> str:
    return "identical" if math.isinf(value) else f"{value:.1f} dB"


def _best_tried(tried) -> str:
    return ", ".join(f"{t:.3g} -> {_db(p)}" for t, p, _s in tried[:3]) or "none"


def psnr_db(images: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR with peak 1 (pixels in [0, 1]; waveforms in [-1, 1] are measured the same way)."""
    mse = float(((images.float() - reference.float()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def refusal(cache, request) -> OmniInputError | None:
    """Why a target cannot be calibrated for this request (before any run), or None."""
    if request.steps < MIN_STEPS:
        return OmniInputError("target_db", cache.target_db,
                              f"a {request.steps}-step schedule (a distilled model) leaves too few steps to "
                              "calibrate a cache on: every skipped step costs much of the image",
                              f"set target_db to 0 and use {cache.threshold_name}, or run {MIN_STEPS} or more steps")
    return cache.calibration_refusal(request)


# What a request says, not how it is set up: these do not change which threshold suits a model.
CONTENT_FIELDS = {"prompt", "negative_prompt", "seed", "images", "positive", "negative", "options"}


def request_key(request) -> tuple:
    """What of a request decides the threshold: its shape, schedule and options; of its content only
    what is given (how many images, a mask or not), not the prompt, the seed or the pictures."""
    settings = tuple((f.name, getattr(request, f.name)) for f in dataclasses.fields(request)
                     if f.name not in CONTENT_FIELDS)
    given = tuple((name, _amount(getattr(request, name))) for name in sorted(CONTENT_FIELDS - {"seed", "options"}))
    options = tuple(sorted((name, _amount(value) if hasattr(value, "shape") else value)  # images and masks: given or not
                           for name, value in request.options.items()))
    return settings + given + (("options", options),)


def _amount(value) -> int:
    if value is None or isinstance(value, str):
        return int(bool(value))
    return len(value) if isinstance(value, (tuple, list)) else 1


class Calibrations:
    """The thresholds found so far, by what decides them: in this process, and in a JSON file when one
    is given (ComfyUI's user folder), so a restart does not calibrate again. The file is plain JSON,
    read with every value checked (another process could write it): a bad file is set aside, never
    trusted. A key includes the size and time of every weights file, so changed weights calibrate anew."""

    KEPT = 256  # entries in the file, the newest kept

    def __init__(self, path: str | Path | None = None):
        self._found: dict[str, Calibration] = {}
        self._lock = threading.Lock()
        self.path: Path | None = None
        self.use_file(path)

    def use_file(self, path: str | Path | None) -> None:
        path = Path(path) if path else None
        with self._lock:
            if path != self.path:
                self.path = path
                self._found.update(_read(path))

    def key(self, spec, request) -> str:
        cache = spec.cache
        settings = dataclasses.replace(cache, **{cache.threshold_field: 0.0, "target_db": 0.0})
        return repr((spec.replace(cache=None), settings, cache.target_db, request_key(request),
                     weights_fingerprint(spec)))

    def get(self, key: str) -> Calibration | None:
        with self._lock:
            return self._found.get(key)

    def put(self, key: str, found: Calibration) -> None:
        with self._lock:
            self._found.pop(key, None)
            self._found[key] = found  # newest last
            if self.path is not None:
                _write(self.path, dict(list(self._found.items())[-self.KEPT:]))

    def clear(self) -> None:
        with self._lock:
            self._found.clear()


def weights_fingerprint(spec) -> tuple:
    """(path, size, modification time) of every weights file the spec reads: the model's, its LoRAs'."""
    if spec.files is not None:
        paths = [getattr(spec.files, f.name) for f in dataclasses.fields(spec.files)
                 if f.name not in ("tokenizer_dirs", "family") and getattr(spec.files, f.name)]
    else:
        paths = sorted(str(p) for p in Path(spec.folder).rglob("*.safetensors"))
    paths += [lora.path for lora in spec.loras]
    found = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _read(path: Path | None) -> dict[str, Calibration]:
    if path is None or not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["calibrations"]
        return {str(key): _calibration(value) for key, value in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("cache calibrations in %s could not be read (%s); they will be found again", path, exc)
        return {}


def _calibration(value: dict) -> Calibration:
    def number(name):
        item = value[name]
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise TypeError(f"{name} is not a number")
        return float(item)

    threshold = number("threshold")
    if not 0.0 <= threshold <= 10.0:  # NaN fails too: a threshold no calibration here finds is not used
        raise ValueError(f"threshold {threshold} is out of range")
    tried = tuple((float(t), float(p), float(s)) for t, p, s in value.get("tried", ()))
    return Calibration(threshold, number("psnr_db"), number("skipped"), int(number("runs")), tried)


def _write(path: Path, found: dict[str, Calibration]) -> None:
    """Atomically (a reader never sees half a file); a failure is logged, the run goes on."""
    entries = {key: {"threshold": c.threshold, "psnr_db": c.psnr_db,
                     "skipped": c.skipped, "runs": c.runs, "tried": [list(t) for t in c.tried]}
               for key, c in found.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as out:
            json.dump({"version": 1, "calibrations": entries}, out)
        os.replace(out.name, path)
    except OSError as exc:
        log.warning("cache calibrations could not be saved to %s (%s); they are kept for this session", path, exc)


def calibrate(generate, decode, spec, request, control: RunControl) -> Calibration:
    """Bisect `spec.cache`'s threshold for its `target_db` on `request`. `generate(spec, request,
    control)` and `decode(spec, latents)` are the engine's; progress runs over all the runs."""
    cache, target = spec.cache, spec.cache.target_db + MARGIN_DB
    segments = CACHED_RUNS + 2  # the uncached run, the cached ones, then the user's run
    runs = [0]

    def run(cache_or_none):
        progress = _segment(control, runs[0], segments)
        runs[0] += 1
        result = generate(spec.replace(cache=cache_or_none), request, progress)
        return result, decode(spec, result.latents)

    _plain, reference = run(None)
    tried: list[tuple[float, float, float]] = []

    def measure(threshold: float) -> tuple[float, float]:
        result, pixels = run(cache.with_threshold(threshold))
        section = result.report.sections.get(cache.label, {})
        possible = section.get("blocks_possible") or 0
        skipped = 1.0 - section.get("blocks_run", possible) / possible if possible else 0.0
        quality = psnr_db(pixels, reference)
        tried.append((threshold, quality, skipped))
        log.info("calibrating %s for %g dB: %s %.4g -> %s, %.0f%% skipped", cache.label, target,
                 cache.threshold_name, threshold, _db(quality), 100 * skipped)
        return quality, skipped

    best = None  # (threshold, psnr, skipped) of the largest threshold that met the target
    high = cache.calibration_top
    low = high / RANGE_RATIO
    quality, skipped = measure(high)
    if quality >= target:
        best = (high, quality, skipped)
    else:
        for _ in range(CACHED_RUNS - 1):
            middle = math.sqrt(low * high)
            quality, skipped = measure(middle)
            if quality >= target:
                low, best = middle, (middle, quality, skipped)
            else:
                high = middle
    if best is None or best[2] == 0.0:
        return Calibration(0.0, math.inf, 0.0, runs[0], tuple(tried))
    return Calibration(best[0], best[1], best[2], runs[0], tuple(tried))


def _segment(control: RunControl, index: int, segments: int) -> RunControl:
    """The control of one calibration run: its steps fill the index-th of `segments` equal parts of
    the progress bar, and Cancel stops it as it stops any run."""
    def progress(step: int, total: int) -> None:
        control.report_progress(index * total + step, segments * total)

    return RunControl(progress=progress, interrupted=control.interrupted)


def final_control(control: RunControl) -> RunControl:
    """The user's own run after a calibration fills the last part of the progress bar."""
    return _segment(control, CACHED_RUNS + 1, CACHED_RUNS + 2)
