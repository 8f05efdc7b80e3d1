"""Every compatibility rule: a spec that trips it and a neighbouring one that passes it.

The specs are built from the tiny models' folders, so this reads configs only (no weights): each
case costs milliseconds. TRIPS lists every RuleDef; a rule added without a case here fails
test_every_rule_has_a_case. Below it, every refusal of a set of feature choices is walked on every
family: its fix offers only what the check accepts (issue 34: fixes sent users in a circle).
"""

from __future__ import annotations

import dataclasses
import re
import string

import pytest
from diffusers import DiffusionPipeline

from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.compile import CompileConfig
from omni_backend.errors import OmniIncompatibleError, OmniInputError
from omni_backend.families import FAMILIES
from omni_backend.families.sd3 import StableDiffusion3
from omni_backend.lora import LoraSpec
from omni_backend.memory import MemoryConfig
from omni_backend.parallel.config import ParallelConfig
from omni_backend.rules.compat import check_spec, collecting_problems, features_of, validate_spec
from omni_backend.rules.feature_matrix import model_support
from omni_backend.spec import ModelSpec, all_rules
from omni_diffusion_nodes.headless.recipes import LORA_FILES


def base(models_dir, family: str) -> ModelSpec:
    return ModelSpec.from_folder(str(models_dir / "diffusers" / family), dtype="fp32", device="cpu")


def lora(models_dir, component: str = "auto") -> LoraSpec:
    return LoraSpec(path=str(models_dir / "loras" / LORA_FILES[0]), component=component)


def cpu_layout(**degrees) -> ParallelConfig:
    ranks = degrees.get("ulysses_degree", 1) * degrees.get("ring_degree", 1) * degrees.get("tensor_parallel", 1) \
        * degrees.get("cfg_parallel", 1)
    return ParallelConfig(devices=("cpu",) * ranks, **degrees)


# rule id -> (family, features that trip it, family, features that pass it, fragment of the message)
TRIPS = {
    "teacache.family": ("sd3", dict(cache=TeaCacheConfig()), "qwen-image", dict(cache=TeaCacheConfig()),
                        "no TeaCache extractor for Stable-Diffusion-3.5"),
    "cache_dit.blocks_left": ("z-image", dict(cache=CacheDiTConfig(Fn_compute_blocks=1, Bn_compute_blocks=1)),
                              "z-image", dict(cache=CacheDiTConfig(Fn_compute_blocks=1)), "keep Fn + Bn below 2"),
    "parallel.devices": ("qwen-image", dict(parallel=ParallelConfig(ring_degree=16)),
                         "qwen-image", dict(parallel=ParallelConfig(ring_degree=8)), "16 local ranks but 8"),
    "parallel.sequence_plan": ("sd3", dict(parallel=cpu_layout(ring_degree=2)),
                               "sd3", dict(parallel=cpu_layout(cfg_parallel=2)), "no sequence-parallel plan"),
    "parallel.tensor_plan": ("sd3", dict(parallel=cpu_layout(tensor_parallel=2)),
                             "z-image", dict(parallel=cpu_layout(tensor_parallel=2)), "no tensor-parallel plan"),
    "parallel.tensor_widths": ("qwen-image", dict(parallel=cpu_layout(tensor_parallel=3)),
                               "qwen-image", dict(parallel=cpu_layout(tensor_parallel=4)),
                               "does not divide its attention heads 4, MLP width 256"),
    "parallel.heads": ("wan2.2", dict(parallel=cpu_layout(ulysses_degree=3)),
                       "wan2.2", dict(parallel=cpu_layout(ring_degree=3)),  # ring attention splits no heads
                       "use ulysses_degree in [1, 2, 4]"),
    "parallel.cfg_branch": ("flux", dict(parallel=cpu_layout(cfg_parallel=2)),
                            "flux2-klein", dict(parallel=cpu_layout(cfg_parallel=2)), "distilled into one pass"),
    "parallel.vae_patches_audio": ("stable-audio", dict(parallel=cpu_layout(cfg_parallel=2, vae_patch_parallel=2)),
                                   "stable-audio", dict(parallel=cpu_layout(cfg_parallel=2)),
                                   "no image patches to hand out"),
    "memory.layerwise_offload_multi_device": (
        "qwen-image", dict(parallel=cpu_layout(ulysses_degree=2), memory=MemoryConfig(offload="layerwise")),
        "qwen-image", dict(parallel=cpu_layout(ulysses_degree=2), memory=MemoryConfig(offload="model")),
        "Parallel Config (2 devices)"),
    "compile.repeated_blocks": ("sd3", dict(compile=CompileConfig()), "qwen-image", dict(compile=CompileConfig()),
                                "(SD3Transformer2DModel) does not name its repeated blocks"),
    "memory.fp8_tensor_parallel": (
        "qwen-image", dict(parallel=cpu_layout(tensor_parallel=2), memory=MemoryConfig(fp8="weight_only")),
        "qwen-image", dict(parallel=cpu_layout(ulysses_degree=2), memory=MemoryConfig(fp8="weight_only")),
        "Offload/FP8 (fp8 = weight_only) cannot be combined with Parallel Config (tensor_parallel = 2)"),
}


def with_features(models_dir, family: str, features: dict, extra=None) -> ModelSpec:
    # dataclasses.replace (not spec.replace): build the spec unvalidated, then ask the rules.
    spec = dataclasses.replace(base(models_dir, family), **features)
    return spec if extra is None else extra(spec)


def rules_of(spec) -> list[str]:
    return [problem.rule for problem in check_spec(spec)]


@pytest.mark.parametrize("rule_id", sorted(TRIPS))
def test_rule_trips_and_passes(models_dir, rule_id):
    tripping_family, tripping, passing_family, passing, fragment = TRIPS[rule_id]
    tripped = with_features(models_dir, tripping_family, tripping)
    assert rules_of(tripped) == [rule_id]
    with pytest.raises(OmniIncompatibleError) as info:
        validate_spec(tripped)
    assert info.value.rule == rule_id and fragment in str(info.value) and "Fix:" in str(info.value)
    assert rules_of(with_features(models_dir, passing_family, passing)) == []


def test_a_lora_component_the_model_lacks(models_dir):
    tripped = dataclasses.replace(base(models_dir, "sd3"), loras=(lora(models_dir, "transformer_2"),))
    assert rules_of(tripped) == ["lora.component"]
    assert "takes LoRA layers only in transformer, text_encoder, text_encoder_2" in str(check_spec(tripped)[0].error())
    assert rules_of(dataclasses.replace(tripped, loras=(lora(models_dir, "text_encoder_2"),))) == []
    wan = dataclasses.replace(base(models_dir, "wan2.2"), loras=(lora(models_dir, "transformer_2"),))
    assert rules_of(wan) == [], "Wan2.2 A14B has a second expert"


class NoLoraPipelineFamily(StableDiffusion3):
    """A family whose pipeline class has no diffusers LoRA loader (none of the shipped six lacks one)."""

    key = "test-no-lora-loader"
    title = "No-LoRA-Loader"

    def pipeline_class(self, class_name):
        return DiffusionPipeline  # the base class: no LoRA loader mixin


def test_a_family_without_a_lora_loader(models_dir, monkeypatch):
    monkeypatch.setitem(FAMILIES, NoLoraPipelineFamily.key, NoLoraPipelineFamily())
    spec = dataclasses.replace(base(models_dir, "sd3"), family_key=NoLoraPipelineFamily.key)
    assert rules_of(spec) == [], "no LoRA node, nothing to refuse"
    tripped = dataclasses.replace(spec, loras=(lora(models_dir),))
    assert rules_of(tripped) == ["lora.loader"]
    assert str(check_spec(tripped)[0].error()).startswith(
        "Load Omni LoRA (qwen-image-style-lora.safetensors) cannot be combined with No-LoRA-Loader")


def test_one_cache_method_per_model_is_refused_at_the_second_cache_node(headless, nodes):
    (spec,) = nodes["OmniLoadModel"]().load("qwen-image", "fp32", "cpu")
    (cached,) = nodes["OmniApplyTeaCache"]().apply(spec, 0.2, 0.0, 1.0, True, "")
    with pytest.raises(OmniIncompatibleError) as info:
        nodes["OmniApplyCacheDiT"]().apply(cached, "custom")
    assert info.value.rule == "cache.one_method"
    assert str(info.value).startswith("Apply Cache-DiT cannot be combined with Apply TeaCache")
    (dit,) = nodes["OmniApplyCacheDiT"]().apply(spec, "custom")
    assert isinstance(dit.cache, CacheDiTConfig)


def test_tensor_parallel_that_splits_no_heads_evenly_is_not_also_blamed_on_ulysses(models_dir):
    spec = with_features(models_dir, "qwen-image", dict(parallel=cpu_layout(tensor_parallel=3)))
    assert rules_of(spec) == ["parallel.tensor_widths"], "no ulysses_degree could fix tensor_parallel 3"


def test_every_rule_has_a_case():
    covered = set(TRIPS) | {"lora.component", "lora.loader", "cache.one_method"}
    assert covered == set(all_rules())


def test_collecting_problems_records_instead_of_raising(models_dir):
    tripped = with_features(models_dir, "sd3", dict(cache=TeaCacheConfig(), parallel=cpu_layout(ulysses_degree=2)))
    with collecting_problems() as found:
        assert validate_spec(tripped) is tripped
    assert [p.rule for p in found] == ["teacache.family", "parallel.sequence_plan"]
    with pytest.raises(OmniIncompatibleError, match="TeaCache"):
        validate_spec(tripped)  # outside the block the first problem raises again


def test_rules_are_about_known_things_and_name_their_values():
    for definition in all_rules().values():
        for template in (definition.first, definition.second, definition.reason, definition.fix):
            for _text, name, spec, conversion in string.Formatter().parse(template):
                if name is not None:  # values by name only: every problem() call passes them as keywords
                    assert name.isidentifier() and not spec and conversion is None, (definition.id, template)
        assert set(definition.between) <= {"teacache", "cache_dit", "sequence_parallel", "tensor_parallel",
                                           "cfg_parallel", "lora", "offload", "fp8", "vae_patch_parallel",
                                           "compile", "parallel", "family", "machine"}, definition.id


def test_faults_of_several_inputs_are_refused_once_when_the_node_runs(nodes, models_dir):
    """ComfyUI repeats a failing VALIDATE_INPUTS once per input it names, so a fault that takes
    several inputs to see is raised by the node itself (it builds a spec only: milliseconds)."""
    parallel = nodes["OmniParallelConfig"]
    assert not hasattr(parallel, "VALIDATE_INPUTS")
    layout = dict(ulysses_degree=2, ring_degree=1, cfg_parallel=1, tensor_parallel=1, devices="auto",
                  remote_ranks=0, rendezvous="")
    model = ModelSpec.from_folder(str(models_dir / "diffusers" / "qwen-image"), device="cpu")
    assert parallel().apply(model, **layout, vae_patch_parallel=2)[0].parallel.world_size == 2
    with pytest.raises(OmniInputError) as info:
        parallel().apply(model, **layout, vae_patch_parallel=4)
    assert str(info.value).startswith("vae_patch_parallel = 4: ") and "Fix: use at most 2" in str(info.value)

    memory = nodes["OmniOffloadFP8"]
    assert not hasattr(memory, "VALIDATE_INPUTS")
    assert memory().apply(model, "none", 2, "weight_only", True)[0].memory.fp8_text_encoder
    with pytest.raises(OmniInputError, match="^fp8_text_encoder = True: "):
        memory().apply(model, "none", 2, "off", True)


# ---- every refusal names only what works -------------------------------------------------------
def refusable_choices(models_dir) -> dict[str, dict]:
    """Feature choices some family refuses, each put on a tiny model of every family (layouts of CPU
    processes, which every machine has: the family decides, not the machine)."""
    return {
        "teacache": dict(cache=TeaCacheConfig()),
        "cache_dit-Fn2-Bn1": dict(cache=CacheDiTConfig(Fn_compute_blocks=2, Bn_compute_blocks=1)),
        "ulysses2": dict(parallel=cpu_layout(ulysses_degree=2)),
        "ulysses3": dict(parallel=cpu_layout(ulysses_degree=3)),
        "ring2": dict(parallel=cpu_layout(ring_degree=2)),
        "tp2": dict(parallel=cpu_layout(tensor_parallel=2)),
        "tp3": dict(parallel=cpu_layout(tensor_parallel=3)),
        "cfg2": dict(parallel=cpu_layout(cfg_parallel=2)),
        "ulysses2-tp2": dict(parallel=cpu_layout(ulysses_degree=2, tensor_parallel=2)),
        "ring2-cfg2-vae2": dict(parallel=cpu_layout(ring_degree=2, cfg_parallel=2, vae_patch_parallel=2)),
        "layerwise-ulysses2": dict(parallel=cpu_layout(ulysses_degree=2), memory=MemoryConfig(offload="layerwise")),
        "fp8-tp2": dict(parallel=cpu_layout(tensor_parallel=2), memory=MemoryConfig(fp8="weight_only")),
        "lora-transformer_2": dict(loras=(lora(models_dir, "transformer_2"),)),
        "compile": dict(compile=CompileConfig()),
    }


# How fixes name each feature (FEATURES keys), to check their words as well as their data.
NAMED = {"teacache": r"teacache", "cache_dit": r"cache-dit", "sequence_parallel": r"sequence.parallel|ulysses|\bring",
         "tensor_parallel": r"tensor.parallel", "cfg_parallel": r"cfg.parallel", "lora": r"lora",
         "offload": r"offload", "fp8": r"fp8", "vae_patch_parallel": r"vae.patch"}


def features_in_use(spec) -> set[str]:
    """The FEATURES keys a spec turns on."""
    parallel, memory = spec.parallel or ParallelConfig(), spec.memory or MemoryConfig()
    used = {"teacache": isinstance(spec.cache, TeaCacheConfig), "cache_dit": isinstance(spec.cache, CacheDiTConfig),
            "sequence_parallel": parallel.sequence_parallel > 1, "tensor_parallel": parallel.tensor_parallel > 1,
            "cfg_parallel": parallel.cfg_parallel > 1, "vae_patch_parallel": parallel.vae_patch_parallel > 1,
            "lora": bool(spec.loras), "offload": memory.offload != "none", "fp8": memory.fp8 != "off"}
    return {key for key, on in used.items() if on}


def refusals(models_dir, family: str):
    """(choice, spec, problem, the spec's problems) for every refusal of every choice on the family's model."""
    model = base(models_dir, family)
    for choice, features in refusable_choices(models_dir).items():
        spec = dataclasses.replace(model, **features)
        problems = check_spec(spec)
        for problem in problems:
            yield choice, spec, problem, problems


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_refusal_offers_only_what_works(models_dir, family):
    """No fix sends the user to another refusal: each way out it offers (as data, not words) is applied
    and checked, and its words name no feature this model refuses besides the ones it is about."""
    refused = {key for key, ok in model_support(base(models_dir, family).model_folder).items() if not ok}
    for choice, spec, problem, problems in refusals(models_dir, family):
        where = f"{family} {choice}: {problem.rule} (fix: {problem.fix!r})"
        about = features_of(problem.between)
        named = {key for key in refused - about if re.search(NAMED[key], problem.fix, re.I)}
        assert not named, f"{where} names {sorted(named)}, which this model refuses"
        assert problem.alternatives, f"{where} offers no way out as data"
        # What may stay: the spec's other refusals about other features (their own fixes tell them).
        others = {other.rule for other in problems if other is not problem and not features_of(other.between) & about}
        for way in problem.alternatives:
            after = way.apply(spec)
            left = {p.rule for p in check_spec(after)} - others
            assert not left, f"{where}: {way} is refused by {sorted(left)}"
            turned_to = features_in_use(after) - features_in_use(spec)
            assert not turned_to & refused, f"{where}: {way} turns to {sorted(turned_to & refused)}"


def test_the_walk_reaches_every_rule_a_family_can_trip(models_dir):
    walked = {problem.rule for family in FAMILIES for _choice, _spec, problem, _all in refusals(models_dir, family)}
    # Not walked: too few devices (a machine's, not a family's), a second cache node (refused at the node,
    # no spec holds two) and a pipeline without a LoRA loader (no shipped family; see above).
    assert walked == set(all_rules()) - {"parallel.devices", "cache.one_method", "lora.loader"}


class OneProcessFamily(StableDiffusion3):
    """A family no parallel method splits (each shipped one has CFG-parallel or sequence parallelism)."""

    key = "test-one-process"
    title = "One-Process"

    def has_true_cfg(self, model_index):
        return False


def test_a_model_no_parallel_method_splits_is_told_to_run_in_one_process(models_dir, monkeypatch):
    monkeypatch.setitem(FAMILIES, OneProcessFamily.key, OneProcessFamily())
    spec = dataclasses.replace(base(models_dir, "sd3"), family_key=OneProcessFamily.key,
                               parallel=cpu_layout(ulysses_degree=2))
    (problem,) = check_spec(spec)
    assert problem.fix == "remove the Parallel Config (this model runs in one process here)"
    assert [way.apply(spec).parallel for way in problem.alternatives] == [None]


def test_a_fix_offers_only_layouts_this_machine_has_devices_for(models_dir, monkeypatch):
    spec = with_features(models_dir, "qwen-image", dict(parallel=ParallelConfig(tensor_parallel=3)))
    monkeypatch.setattr("omni_backend.parallel.config.available_local_ranks", lambda config: 3)
    (problem,) = check_spec(spec)
    assert problem.fix == "use tensor_parallel in [2]", "tensor_parallel 4 needs a fourth device"
    monkeypatch.setattr("omni_backend.parallel.config.available_local_ranks", lambda config: 4)
    assert check_spec(spec)[0].fix == "use tensor_parallel in [2, 4]"
