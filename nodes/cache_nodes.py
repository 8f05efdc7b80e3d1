"""Apply TeaCache and Apply Cache-DiT: OMNI_MODEL -> OMNI_MODEL with one cache method attached."""

from __future__ import annotations

from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.cache.cachedit import PRESETS, SCM_MODES, SCM_POLICIES
from omni_backend.cache.calibration import CACHED_RUNS, HIGHEST_TARGET
from omni_backend.cache.one_method import refuse_second_cache
from omni_backend.errors import OmniInputError

from .common import MODEL_IN_TOOLTIP, OMNI_MODEL, ModelFeatureNode, as_verdict


def quality_target_input(threshold_name: str) -> dict:
    """The optional input both cache nodes share: a PSNR floor that picks the threshold."""
    return {"target_db": ("FLOAT", {
        "default": 0.0, "min": 0.0, "max": HIGHEST_TARGET, "step": 0.5,
        "tooltip": f"0: {threshold_name} decides. Otherwise the least PSNR (dB) the image may have against the "
                   "uncached one: 40 near identical, 35 balanced, 30 fastest. The first run finds the "
                   f"{threshold_name} for it on your prompt (one uncached and up to {CACHED_RUNS} cached runs, "
                   "once per model, size and step count) and the report says what it chose."})}


def parse_coefficients(text: str) -> tuple[float, ...] | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        values = tuple(float(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise OmniInputError("coefficients", text, "not a list of numbers",
                             "leave empty, or write 5 numbers separated by commas") from None
    if len(values) != 5:
        raise OmniInputError("coefficients", text, f"TeaCache needs exactly 5 numbers, got {len(values)}",
                             "write the 5 polynomial coefficients, highest order first")
    return values


class OmniApplyTeaCache(ModelFeatureNode):
    DESCRIPTION = ("Skip the whole transformer on steps whose first-block input barely changed, reusing the "
                   "last computed residual. 0.2 is about 2x on Qwen-Image at near-identical quality.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (OMNI_MODEL, {"tooltip": MODEL_IN_TOOLTIP}),
            "rel_l1_thresh": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 2.0, "step": 0.01,
                                        "tooltip": "Higher skips more steps. 0 never skips."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Caching may act from this fraction of the steps..."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "...up to this one. The first step always computes."}),
            "compute_last_step": ("BOOLEAN", {"default": True,
                                              "tooltip": "Always compute the final step (recommended)."}),
            "coefficients": ("STRING", {"default": "", "tooltip": "Optional: 5 comma-separated polynomial "
                                        "coefficients fitted for a fine-tuned model; empty = the model's own."}),
        }, "optional": quality_target_input("rel_l1_thresh")}

    @classmethod
    def VALIDATE_INPUTS(cls, coefficients=None):
        return as_verdict(cls.queue_check, coefficients=coefficients)

    @classmethod
    def queue_check(cls, coefficients=None):
        parse_coefficients(coefficients or "")

    def apply(self, model, rel_l1_thresh, start_percent, end_percent, compute_last_step, coefficients,
              target_db=0.0):
        config = TeaCacheConfig(rel_l1_thresh=rel_l1_thresh, start_fraction=start_percent,
                                end_fraction=end_percent, compute_last_step=compute_last_step,
                                coefficients=parse_coefficients(coefficients), target_db=target_db)
        refuse_second_cache(model.cache, config.node_title)
        return (model.replace(cache=config),)


class OmniApplyCacheDiT(ModelFeatureNode):
    DESCRIPTION = ("cache-dit's DBCache (+ TaylorSeer, + SCM step masks). Presets reproduce vLLM-Omni's "
                   "benchmark settings; 'custom' uses the values below.")

    @classmethod
    def INPUT_TYPES(cls):
        defaults = CacheDiTConfig()
        return {"required": {
            "model": (OMNI_MODEL, {"tooltip": MODEL_IN_TOOLTIP}),
            "preset": (list(PRESETS), {"default": "custom",
                                       "tooltip": "A named setting overrides the values below; 'custom' uses them."}),
            "Fn_compute_blocks": ("INT", {"default": defaults.Fn_compute_blocks, "min": 0, "max": 128,
                                          "tooltip": "Leading blocks always computed (they decide the cache)."}),
            "Bn_compute_blocks": ("INT", {"default": defaults.Bn_compute_blocks, "min": 0, "max": 128,
                                          "tooltip": "Trailing blocks always computed."}),
            "max_warmup_steps": ("INT", {"default": defaults.max_warmup_steps, "min": 0, "max": 1000,
                                         "tooltip": "Steps at the start that always compute, before any "
                                                    "caching (default 4; 8 with TaylorSeer)."}),
            "residual_diff_threshold": ("FLOAT", {"default": defaults.residual_diff_threshold, "min": 0.0,
                                                  "max": 10.0, "step": 0.01,
                                                  "tooltip": "Relative change of the leading blocks' residual "
                                                             "below which a step reuses the cache. Higher is "
                                                             "faster and looser (0.08 to 0.24 is typical)."}),
            "max_cached_steps": ("INT", {"default": defaults.max_cached_steps, "min": -1, "max": 1000,
                                         "tooltip": "Most steps that may use the cache in one run; -1: no "
                                                    "limit."}),
            "max_continuous_cached_steps": ("INT", {"default": defaults.max_continuous_cached_steps, "min": -1,
                                                    "max": 1000, "tooltip": "Most cached steps in a row before one "
                                                    "must compute (default 3); -1: no limit."}),
            "enable_taylorseer": ("BOOLEAN", {"default": defaults.enable_taylorseer,
                                               "tooltip": "Extrapolate cached steps from the last computed ones "
                                                          "(Taylor series) instead of repeating the residual: "
                                                          "better quality at the same speed."}),
            "taylorseer_order": ("INT", {"default": defaults.taylorseer_order, "min": 1, "max": 4,
                                          "tooltip": "TaylorSeer's order (1 to 4): 1 is recommended, 2 for "
                                                     "long step counts; higher keeps more residuals in memory."}),
            "scm_policy": (list(SCM_POLICIES), {"default": defaults.scm_policy,
                                                "tooltip": "Step Computation Masking: which steps must compute."}),
            "scm_mode": (list(SCM_MODES), {"default": defaults.scm_mode,
                                            "tooltip": "dynamic: a masked step still computes when the "
                                                       "residual changed too much. static: masked steps always "
                                                       "use the cache (faster, looser)."}),
        }, "optional": quality_target_input("residual_diff_threshold")}

    def apply(self, model, preset, **settings):
        config = CacheDiTConfig(**settings).with_preset(preset)
        refuse_second_cache(model.cache, config.node_title)
        return (model.replace(cache=config),)
