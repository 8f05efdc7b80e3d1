"""Apply Cache-DiT: DBCache, TaylorSeer and SCM from the cache-dit library, per run.

cache-dit is enabled at the start of each run with a config built for that run (step count,
CFG layout, the SCM mask for that many steps) and disabled at the end, which restores the
transformer exactly (checked by the tests): nothing of it survives into a later run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from dataclasses import dataclass

from ..blocks.diagnostics import count_block_work
from ..errors import OmniInputError
from ..rules.checks import real_number, whole_number
from ..rules.compat import alternative, define_rule
from ..system.process_lock import process_lock
from .calibration import quality_target
from .one_method import ONE_CACHE_METHOD
from .skipped_work import cache_section

log = logging.getLogger("omni_diffusion")

SCM_POLICIES = ("none", "slow", "medium", "fast", "ultra")
SCM_MODES = ("dynamic", "static")


CACHE_DIT_NEEDS_BLOCKS_LEFT = define_rule(
    "cache_dit.blocks_left", ("cache_dit", "family"),
    "Cache-DiT always computes the first Fn and last Bn blocks; at least one block must be left to cache",
    first="Apply Cache-DiT (Fn_compute_blocks + Bn_compute_blocks = {used})", second="{family}",
    reason="this model's smallest block list has {smallest} blocks, so nothing would be left to cache",
    fix="keep Fn + Bn below {smallest} (e.g. Fn {fn}, Bn {bn})")


@dataclass(frozen=True)
class CacheDiTConfig:
    # Defaults follow vLLM-Omni's (cache-dit's own are Fn=8, W=8, threshold 0.08).
    Fn_compute_blocks: int = 1
    Bn_compute_blocks: int = 0
    max_warmup_steps: int = 4
    residual_diff_threshold: float = 0.24
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = 3
    enable_taylorseer: bool = False
    taylorseer_order: int = 1
    scm_policy: str = "none"
    scm_mode: str = "dynamic"
    target_db: float = 0.0  # > 0: find residual_diff_threshold for this PSNR floor instead (calibration.py)

    label = "Cache-DiT"
    node_title = "Apply Cache-DiT"
    threshold_field = threshold_name = "residual_diff_threshold"
    calibration_top = 1.0  # a residual difference of 1: the leading blocks' output changed by all of itself
    RULES = (CACHE_DIT_NEEDS_BLOCKS_LEFT, ONE_CACHE_METHOD)
    patches_classes = True  # cache-dit patches the pipeline's classes: its runs go alone (class_guard.py)

    def __post_init__(self):
        for name in ("Fn_compute_blocks", "Bn_compute_blocks", "max_warmup_steps"):
            object.__setattr__(self, name, whole_number(name, getattr(self, name), 0, fix="use 0 or more"))
        for name in ("max_cached_steps", "max_continuous_cached_steps"):
            object.__setattr__(self, name, whole_number(name, getattr(self, name), -1, fix="use -1 (no limit) or more"))
        object.__setattr__(self, "taylorseer_order", whole_number("taylorseer_order", self.taylorseer_order))
        object.__setattr__(self, "residual_diff_threshold", real_number(
            "residual_diff_threshold", self.residual_diff_threshold, 0.0,
            fix="use 0.24 (the default) or another positive value"))
        object.__setattr__(self, "target_db", quality_target(self.target_db))
        for name in ("enable_taylorseer",):
            if not isinstance(getattr(self, name), bool):
                raise OmniInputError(name, getattr(self, name), "must be true or false", f"set {name} to True or False")
        if self.scm_policy not in SCM_POLICIES:
            raise OmniInputError("scm_policy", self.scm_policy, "unknown SCM policy",
                                 f"use one of {', '.join(SCM_POLICIES)}")
        if self.scm_mode not in SCM_MODES:
            raise OmniInputError("scm_mode", self.scm_mode, "unknown SCM mode", "use dynamic or static")
        if not 1 <= self.taylorseer_order <= 4:
            raise OmniInputError("taylorseer_order", self.taylorseer_order, "TaylorSeer orders run from 1 to 4",
                                 "use 1 (recommended) or 2")

    def problems(self, spec) -> list:
        family = spec.family
        smallest = min(family.block_counts(spec.model_folder.transformer_config))
        used = self.Fn_compute_blocks + self.Bn_compute_blocks
        if used < smallest:
            return []
        fn = min(self.Fn_compute_blocks, smallest - 1)  # the nearest counts that leave a block to cache
        bn = min(self.Bn_compute_blocks, smallest - 1 - fn)
        return [CACHE_DIT_NEEDS_BLOCKS_LEFT.problem(
            used=used, family=family.title, smallest=smallest, fn=fn, bn=bn,
            alternatives=[alternative(cache=dataclasses.replace(self, Fn_compute_blocks=fn, Bn_compute_blocks=bn))])]

    @contextlib.contextmanager
    def run_session(self, ctx):
        import cache_dit

        family, pipe, request = ctx.family, ctx.pipe, ctx.request
        for problem in self.problems(ctx.spec):
            raise problem.error()
        refusal = family.cache_dit_refusal(request)
        if refusal:
            raise OmniInputError("Apply Cache-DiT", family.title, refusal,
                                 "remove Apply Cache-DiT for this run (or run without the reference images)")
        _quiet_cache_dit()
        steps = split_steps(family, pipe, request.steps)
        from ..parallel.runtime import cfg_parallel_active

        # Under CFG-parallel each rank makes one call per step (its branch): no alternation to track.
        separate_cfg = (family.cfg_in_separate_calls and family.runs_two_branches(pipe, request)
                        and not cfg_parallel_active())
        base = self._db_config(request.steps, separate_cfg, ctx.report)
        modifiers = [cache_dit.ParamsModifier(cache_config=self._db_config(n, separate_cfg, ctx.report, expert=i))
                     for i, n in enumerate(steps)] if len(steps) > 1 else None
        calibrator = (cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=self.taylorseer_order)
                      if self.enable_taylorseer else None)
        # cache-dit patches the pipeline's and the transformer's classes: process-wide state (process_lock.py;
        # class_guard.py keeps other runs of those classes out until it is disabled again).
        with count_block_work(ctx.pipe, ctx.family) as work:  # before the cache's own hooks
            with process_lock():
                cache_dit.enable_cache(pipe, cache_config=base, calibrator_config=calibrator,
                                       params_modifiers=modifiers)
            try:
                yield
            finally:
                try:
                    stats = cache_dit.summary(pipe, logging=False)
                finally:
                    with process_lock():
                        cache_dit.disable_cache(pipe)
        lists = [len(family.block_lists(t)) for _name, t in family.transformers(pipe)]
        account = summarize(stats, lists, separate_cfg)
        section = cache_section(work, account["text"], self.why_nothing_skipped(stats, request.steps))
        ctx.report.add(self.label, {**account, **section})

    def why_nothing_skipped(self, stats, steps: int) -> str:
        if self.residual_diff_threshold <= 0:
            return "residual_diff_threshold 0 never uses the cache"
        if steps <= self.max_warmup_steps:
            return f"its first {self.max_warmup_steps} warm-up steps always compute and this run has {steps}"
        differences = [float(d) for stat in stats for d in (getattr(stat, "residual_diffs", None) or {}).values()]
        if differences:
            return (f"the smallest residual difference was {min(differences):.3g}, not below "
                    f"residual_diff_threshold {self.residual_diff_threshold:g}")
        return "no step passed cache-dit's warm-up and step limits"

    def _db_config(self, steps: int, separate_cfg: bool, report, expert: int = 0):
        from cache_dit import DBCacheConfig, steps_mask

        warmup, max_cached = self.max_warmup_steps, self.max_cached_steps
        if expert == 1:
            # Wan2.2's low-noise expert runs few, late steps: its own small warm-up and budget (as vLLM-Omni).
            warmup, max_cached = min(warmup, 2), 20 if max_cached < 0 else max_cached
        mask = None
        if self.scm_policy != "none":
            if steps >= 8 or steps in (4, 6):
                mask = steps_mask(mask_policy=self.scm_policy, total_steps=steps)
            else:
                report.notice(f"SCM needs 4, 6 or at least 8 steps per transformer; {steps} steps ran with "
                              "DBCache only")
        return DBCacheConfig(
            Fn_compute_blocks=self.Fn_compute_blocks, Bn_compute_blocks=self.Bn_compute_blocks,
            max_warmup_steps=warmup, residual_diff_threshold=self.residual_diff_threshold,
            max_cached_steps=max_cached, max_continuous_cached_steps=self.max_continuous_cached_steps,
            enable_separate_cfg=separate_cfg, num_inference_steps=steps, steps_computation_mask=mask,
            steps_computation_policy=self.scm_mode,
        )

    def with_threshold(self, threshold: float) -> "CacheDiTConfig":
        return dataclasses.replace(self, residual_diff_threshold=threshold, target_db=0.0)

    def calibration_refusal(self, request) -> OmniInputError | None:
        if request.steps - self.max_warmup_steps < 2:
            return OmniInputError("target_db", self.target_db, f"{self.max_warmup_steps} warm-up steps of "
                                  f"{request.steps} leave fewer than two that may use the cache: nothing to calibrate",
                                  "lower max_warmup_steps, run more steps, or set target_db to 0")
        return None

    def with_preset(self, name: str) -> "CacheDiTConfig":
        return dataclasses.replace(self, **PRESETS[name]) if name != "custom" else self


# vLLM-Omni's published Cache-DiT benchmark settings, by name (its acceleration overview's rows).
PRESETS = {
    "custom": {},
    "vllm-omni default (Fn1 B0 W4)": dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=4,
                                          residual_diff_threshold=0.24, max_continuous_cached_steps=3,
                                          enable_taylorseer=False, scm_policy="none"),
    "DBCache + TaylorSeer (Fn1 B0 W8)": dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=8,
                                             residual_diff_threshold=0.24, max_continuous_cached_steps=3,
                                             enable_taylorseer=True, taylorseer_order=1, scm_policy="none"),
    "DBCache + TaylorSeer + SCM fast (Fn8 B0 W4)": dict(Fn_compute_blocks=8, Bn_compute_blocks=0,
                                                        max_warmup_steps=4, residual_diff_threshold=0.24,
                                                        max_continuous_cached_steps=3, enable_taylorseer=True,
                                                        taylorseer_order=1, scm_policy="fast"),
}


def _quiet_cache_dit() -> None:
    """cache-dit logs every hook it installs (INFO and WARNING) on every run; that buries the user's log."""
    logging.getLogger("cache_dit").setLevel(logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("cache_dit"):
            logging.getLogger(name).setLevel(logging.ERROR)


def split_steps(family, pipe, steps: int) -> list[int]:
    """Steps each denoiser runs: Wan2.2 A14B hands over to transformer_2 at its boundary timestep."""
    boundary_ratio = getattr(pipe.config, "boundary_ratio", None)
    if len(family.transformers(pipe)) < 2 or boundary_ratio is None:
        return [steps]
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    boundary = boundary_ratio * scheduler.config.num_train_timesteps
    high_noise = int(sum(1 for t in scheduler.timesteps if t >= boundary))
    return [high_noise, steps - high_noise]


def summarize(stats, lists_per_transformer: list[int], separate_cfg: bool) -> dict:
    """cache-dit reports one entry per block list plus a model-level one; the steps a transformer
    cached are those of its first block list."""
    firsts, position = [], 0
    for count in lists_per_transformer:
        if position < len(stats):
            firsts.append(stats[position])
        position += count
    stats = firsts
    parts, cached_total, calls_total = [], 0, 0
    for index, stat in enumerate(stats):
        executed = int(getattr(stat, "accumulated_executed_steps", 0) or 0)
        cached = len(getattr(stat, "cached_steps", []) or [])
        cfg_cached = len(getattr(stat, "cfg_cached_steps", []) or [])
        name = f"transformer {index + 1}: " if len(stats) > 1 else ""
        branch = f", uncond cached {cfg_cached}" if separate_cfg else ""
        parts.append(f"{name}cached {cached}/{executed} steps{branch}")
        cached_total += cached + cfg_cached
        calls_total += executed * (2 if separate_cfg else 1)
    speedup = calls_total / (calls_total - cached_total) if calls_total > cached_total else 1.0
    text = "; ".join(parts) + " by cache-dit's count"
    return {"text": text, "speedup_estimate": speedup,
            "cached_steps": [list(getattr(s, "cached_steps", []) or []) for s in stats],
            "cfg_cached_steps": [list(getattr(s, "cfg_cached_steps", []) or []) for s in stats]}
