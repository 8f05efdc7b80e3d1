"""Apply TeaCache: the feature config carried by OMNI_MODEL and its per-run session."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import numpy as np

from ..blocks.diagnostics import count_block_work
from ..errors import OmniInputError
from ..rules.checks import real_number
from ..rules.compat import alternative, define_rule, ways_out
from .cachedit import CacheDiTConfig
from .calibration import quality_target
from .one_method import ONE_CACHE_METHOD
from .skipped_work import cache_section

TEACACHE_NEEDS_EXTRACTOR = define_rule(
    "teacache.family", ("teacache", "family"),
    "TeaCache needs a per-family extractor of the first block's modulated input and fitted coefficients",
    first="Apply TeaCache", second="{family}", reason="there is no TeaCache extractor for {family}",
    fix="{instead} (TeaCache supports: {supported})")


@dataclass(frozen=True)
class TeaCacheConfig:
    rel_l1_thresh: float = 0.2
    start_fraction: float = 0.0  # caching may act from this fraction of the steps ...
    end_fraction: float = 1.0  # ... up to this one
    compute_last_step: bool = True
    coefficients: tuple[float, ...] | None = None  # None: the family's fitted polynomial
    target_db: float = 0.0  # > 0: find rel_l1_thresh for this PSNR floor instead (calibration.py)

    label = "TeaCache"
    node_title = "Apply TeaCache"
    threshold_field = threshold_name = "rel_l1_thresh"
    calibration_top = 2.0  # Apply TeaCache's largest threshold
    RULES = (TEACACHE_NEEDS_EXTRACTOR, ONE_CACHE_METHOD)

    def __post_init__(self):
        threshold_fix = "use 0 (never skip) up to about 0.6; 0.2 is the recommended default"
        object.__setattr__(self, "rel_l1_thresh", real_number("rel_l1_thresh", self.rel_l1_thresh, 0.0,
                                                              fix=threshold_fix))
        object.__setattr__(self, "target_db", quality_target(self.target_db))
        for name, field in (("start_percent", "start_fraction"), ("end_percent", "end_fraction")):
            object.__setattr__(self, field, real_number(name, getattr(self, field), 0.0, 1.0))
        if self.coefficients is not None:
            if isinstance(self.coefficients, (str, bytes)) or not hasattr(self.coefficients, "__len__"):
                raise OmniInputError("coefficients", self.coefficients, "must be 5 numbers",
                                     "pass a list of 5 numbers, highest order first, or None for the model's own")
            object.__setattr__(self, "coefficients", tuple(real_number("coefficients", c) for c in self.coefficients))
        if not self.start_fraction <= self.end_fraction:
            raise OmniInputError("start_percent/end_percent", (self.start_fraction, self.end_fraction),
                                 "need 0 <= start <= end <= 1", "e.g. start 0.0 and end 1.0")
        if self.coefficients is not None and len(self.coefficients) != 5:
            raise OmniInputError("coefficients", self.coefficients, "TeaCache needs exactly 5 coefficients "
                                 "(a degree-4 polynomial, highest order first)",
                                 "leave it empty to use the model's own, or paste 5 comma-separated numbers")

    def problems(self, spec) -> list:
        from ..families import FAMILIES

        family = spec.family
        if family.teacache_coefficients is not None:
            return []
        supported = ", ".join(f.title for f in FAMILIES.values() if f.teacache_coefficients is not None)
        ways = ways_out(spec, TEACACHE_NEEDS_EXTRACTOR, {"use Apply Cache-DiT instead": alternative(
            cache=CacheDiTConfig())}) or {"remove Apply TeaCache": alternative(cache=None)}
        return [TEACACHE_NEEDS_EXTRACTOR.problem(family=family.title, supported=supported, instead=next(iter(ways)),
                                                 alternatives=ways.values())]

    def with_threshold(self, threshold: float) -> "TeaCacheConfig":
        return dataclasses.replace(self, rel_l1_thresh=threshold, target_db=0.0)

    def calibration_refusal(self, request) -> OmniInputError | None:
        from .teacache_hooks import TeaCacheSchedule

        schedule = TeaCacheSchedule(request.steps, self.start_fraction, self.end_fraction, self.compute_last_step)
        if sum(map(schedule.may_skip, range(request.steps))) < 2:
            return OmniInputError("target_db", self.target_db, f"start_percent/end_percent leave fewer than two of "
                                  f"the {request.steps} steps that may skip: there is nothing to calibrate",
                                  "widen start_percent..end_percent, or set target_db to 0")
        return None

    def polynomial(self, family) -> tuple[float, ...]:
        return self.coefficients or family.teacache_coefficients

    def why_nothing_skipped(self, family, deciders) -> str:
        closest = min((d.closest for d in deciders if d.closest is not None), default=None)
        if closest is None:
            return (f"no step may reuse the cache at {deciders[0].schedule.steps if deciders else 0} steps (the first "
                    f"step{' and the last' if self.compute_last_step else ''} always compute; window "
                    f"{self.start_fraction:g}-{self.end_fraction:g} of the steps)")
        text = f"the smallest accumulated change was {closest:.3g}, not below rel_l1_thresh {self.rel_l1_thresh:g}"
        floor = coefficient_floor(self.polynomial(family))
        if self.rel_l1_thresh <= floor:
            text += (f"; this model's coefficients add at least {floor:.3g} per step, so a threshold at or below "
                     "that never skips: raise it, or set a quality target")
        return text

    @contextlib.contextmanager
    def run_session(self, ctx):
        from .teacache_hooks import TeaCacheDecider, TeaCacheSchedule, attach, detach

        family = ctx.family
        for problem in self.problems(ctx.spec):
            raise problem.error()
        schedule = TeaCacheSchedule(ctx.request.steps, self.start_fraction, self.end_fraction,
                                    self.compute_last_step)
        attached = []
        with count_block_work(ctx.pipe, ctx.family) as work:  # before the cache's own hooks
            try:
                for _name, transformer in family.transformers(ctx.pipe):
                    block_lists = [blocks for _attr, blocks in family.block_lists(transformer)]
                    decider = TeaCacheDecider(lambda block, a, k: family.teacache_modulated_input(block, a, k),
                                              self.polynomial(family), self.rel_l1_thresh, schedule,
                                              agree=ctx.reduce_sums)
                    manager = attach(transformer, block_lists, decider)
                    attached.append((transformer, block_lists, manager, decider))
                yield
            finally:
                for transformer, block_lists, manager, _decider in attached:
                    manager.reset()
                    detach(transformer, block_lists)
        deciders = [decider for *_rest, decider in attached]
        account = summarize(deciders)
        section = cache_section(work, account["text"], self.why_nothing_skipped(family, deciders))
        ctx.report.add(self.label, {**account, **section})


def coefficient_floor(coefficients, largest_change: float = 1.0) -> float:
    """The least one step adds to the accumulated change: min |polynomial(x)| over the relative
    changes x from 0 to `largest_change`. A threshold at or below it can never skip a step."""
    changes = np.linspace(0.0, largest_change, 20001)
    return float(np.abs(np.polyval(coefficients, changes)).min())


def summarize(deciders) -> dict:
    branches = {}
    for decider in deciders:
        for name, record in decider.steps.items():
            entry = branches.setdefault(name, {"computed": [], "skipped": []})
            entry["computed"] += record["computed"]
            entry["skipped"] += record["skipped"]
    computed = sum(len(b["computed"]) for b in branches.values())
    total = computed + sum(len(b["skipped"]) for b in branches.values())
    speedup = total / computed if computed else 1.0
    parts = [f"{name} computed {len(b['computed'])}/{len(b['computed']) + len(b['skipped'])} steps"
             for name, b in branches.items()]
    text = ", ".join(parts) if parts else "the transformer was not called"
    return {"text": text, "branches": branches, "speedup_estimate": speedup}
