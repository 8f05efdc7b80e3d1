"""Load LoRA: stacked adapters with strengths, switched per run without reloading the base weights.

Every LoRA here is a real peft adapter of the tiny model, saved with diffusers (omni_backend.tiny.lora)
and loaded through the node and the engine; outputs are compared with torch.equal where the math
gives the same floats (strength 0, no LoRA, the same file twice) and with a tolerance where it only
gives the same real numbers (two files at 0.5 vs one at 1.0).
"""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from omni_backend.engine import default_engine
from omni_backend.errors import OmniIncompatibleError, OmniInputError, OmniInterrupted
from omni_backend.families import FAMILIES
from omni_backend.lora.adapters import STATE_KEY
from omni_backend.request import GenerationRequest
from omni_backend.run.sampling import RunControl
from omni_backend.tiny.lora import make_tiny_lora

SUBDIR = "test_lora"  # under the session models dir's loras/, so the node resolves the names


@pytest.fixture(scope="module")
def lora_files(models_dir):
    """lora_files(name, family="qwen-image", **make_tiny_lora options) -> the name the node takes."""
    made = {}

    def make(name, family="qwen-image", **options):
        relative = f"{SUBDIR}/{name}"
        if relative not in made:
            make_tiny_lora(models_dir / "diffusers" / family, models_dir / "loras" / relative, **options)
            made[relative] = options
        return relative

    return make


def path_of(models_dir, name):
    return models_dir / "loras" / name


def base_spec(nodes, family="qwen-image"):
    (spec,) = nodes["OmniLoadModel"]().load(family, "fp32", "cpu")
    return spec


def with_loras(nodes, spec, *loras):
    """Chain Load LoRA nodes: loras = (name, strength[, component])."""
    for lora in loras:
        name, strength, component = (*lora, "auto")[:3]
        (spec,) = nodes["OmniLoadLoRA"]().apply(spec, name, strength, component)
    return spec


def run(spec, family="qwen-image", control=None, **overrides):
    settings = dict(prompt="a red circle", steps=2, width=64, height=48, guidance=1.0, seed=3)
    settings.update(FAMILIES[family].tiny_request_overrides())
    settings.update(overrides)
    return default_engine().generate(spec, GenerationRequest.of(**settings), control)


def latents(spec, **kwargs):
    return run(spec, **kwargs).latents


def adapters_of(spec):
    return default_engine().loaded(spec).state[STATE_KEY]


def tuner_layers(module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


# ---- the node -------------------------------------------------------------------------------
def test_node_chains_a_stack_without_touching_its_input(headless, nodes, lora_files):
    a, b = lora_files("a.safetensors", seed=1), lora_files("b.safetensors", seed=2)
    spec = base_spec(nodes)
    stacked = with_loras(nodes, spec, (a, 0.8), (b, -0.5, "transformer"))
    assert spec.loras == ()  # the input spec is unchanged (immutable specs, branches share it)
    assert [(lora.name, lora.strength, lora.component) for lora in stacked.loras] == [
        ("a.safetensors", 0.8, "auto"), ("b.safetensors", -0.5, "transformer")]
    assert stacked.weights_key() == spec.weights_key(), "LoRAs must never decide which weights are loaded"
    assert "OmniLoadLoRA" in nodes and a in nodes["OmniLoadLoRA"].INPUT_TYPES()["required"]["lora_name"][0]


def test_node_reports_missing_and_non_safetensors_files(headless, nodes, tmp_path, models_dir):
    validate = nodes["OmniLoadLoRA"].VALIDATE_INPUTS
    assert validate(lora_name="qwen-image-style-lora.safetensors") is True
    missing = validate(lora_name="no-such-lora.safetensors")
    assert "no-such-lora.safetensors" in missing and "not found" in missing and "loras" in missing
    pickled = path_of(models_dir, f"{SUBDIR}/old.ckpt")
    pickled.parent.mkdir(parents=True, exist_ok=True)
    pickled.write_bytes(pickle.dumps({"lora_A": [1.0]}))
    assert "is not a .safetensors file" in validate(lora_name=f"{SUBDIR}/old.ckpt")
    renamed = path_of(models_dir, f"{SUBDIR}/renamed-pickle.safetensors")
    renamed.write_bytes(pickle.dumps({"lora_A": [1.0]}))
    message = validate(lora_name=f"{SUBDIR}/renamed-pickle.safetensors")
    assert "renamed-pickle.safetensors" in message and "not a valid safetensors file" in message
    with pytest.raises(OmniInputError, match="not a valid safetensors file"):
        nodes["OmniLoadLoRA"]().apply(base_spec(nodes), f"{SUBDIR}/renamed-pickle.safetensors", 1.0, "auto")


def test_component_the_model_lacks_is_refused_at_the_node(headless, nodes, lora_files):
    a = lora_files("a.safetensors", seed=1)
    with pytest.raises(OmniIncompatibleError, match="transformer_2"):
        with_loras(nodes, base_spec(nodes), (a, 1.0, "transformer_2"))
    with pytest.raises(OmniIncompatibleError, match="text_encoder"):
        with_loras(nodes, base_spec(nodes), (a, 1.0, "text_encoder"))  # Qwen-Image: transformer only


# ---- strengths, stacking, exactness -----------------------------------------------------------
def test_strength_one_changes_the_output_and_zero_or_removal_give_the_base_exactly(headless, nodes, lora_files):
    a = lora_files("a.safetensors", seed=1)
    spec = base_spec(nodes)
    base = latents(spec)
    full = latents(with_loras(nodes, spec, (a, 1.0)))
    assert not torch.allclose(full, base, atol=1e-3), "the LoRA did not change the output"
    assert torch.equal(latents(with_loras(nodes, spec, (a, 0.0))), base), "strength 0 must be the base model"
    assert torch.equal(latents(spec), base), "removing the Load LoRA node must give the base model (no leak)"
    assert torch.equal(latents(with_loras(nodes, spec, (a, 1.0))), full), "switching back on is repeatable"
    negative = latents(with_loras(nodes, spec, (a, -1.0)))
    assert not torch.allclose(negative, base, atol=1e-3) and not torch.allclose(negative, full, atol=1e-3)


def test_two_halves_equal_one_whole(headless, nodes, lora_files, models_dir):
    a = lora_files("a.safetensors", seed=1)
    copy = f"{SUBDIR}/a-copy.safetensors"  # same factors, another file: a second adapter
    shutil.copyfile(path_of(models_dir, a), path_of(models_dir, copy))
    spec = base_spec(nodes)
    whole = latents(with_loras(nodes, spec, (a, 1.0)))
    # The same file twice is one adapter with the strengths added: the same floats.
    assert torch.equal(latents(with_loras(nodes, spec, (a, 0.5), (a, 0.5))), whole)
    # Two adapters at 0.5: B(Ax)*0.5 + B(Ax)*0.5 == B(Ax)*1 in real numbers, not bit for bit.
    halves = latents(with_loras(nodes, spec, (a, 0.5), (copy, 0.5)))
    assert torch.allclose(halves, whole, atol=1e-5), (halves - whole).abs().max()
    assert len(adapters_of(spec).loaded_names) >= 2


def test_stacking_two_different_loras_differs_from_either(headless, nodes, lora_files):
    a, b = lora_files("a.safetensors", seed=1), lora_files("b.safetensors", seed=2)
    spec = base_spec(nodes)
    only_a = latents(with_loras(nodes, spec, (a, 1.0)))
    only_b = latents(with_loras(nodes, spec, (b, 1.0)))
    both = latents(with_loras(nodes, spec, (a, 1.0), (b, 1.0)))
    assert not torch.allclose(both, only_a, atol=1e-3) and not torch.allclose(both, only_b, atol=1e-3)
    assert torch.equal(latents(with_loras(nodes, spec, (a, 1.0), (b, 0.0))), only_a), "b at 0 must be off"


def test_community_layouts_load_as_the_same_adapter(headless, nodes, lora_files):
    # rank 4, alpha 2: diffusers reads alpha from the file's metadata, kohya/ComfyUI from `.alpha` keys.
    names = {layout: lora_files(f"alpha-{layout}.safetensors", seed=7, rank=4, alpha=2.0, layout=layout)
             for layout in ("diffusers", "kohya", "comfyui")}
    spec = base_spec(nodes)
    outputs = {layout: latents(with_loras(nodes, spec, (name, 1.0))) for layout, name in names.items()}
    assert not torch.allclose(outputs["diffusers"], latents(spec), atol=1e-3)
    assert torch.allclose(outputs["kohya"], outputs["diffusers"], atol=1e-6)
    assert torch.allclose(outputs["comfyui"], outputs["diffusers"], atol=1e-6)
    # alpha/rank = 0.5 is applied: the same factors saved with alpha = rank act twice as strongly.
    unit = lora_files("alpha-unit.safetensors", seed=7, rank=4, alpha=4.0)
    assert torch.allclose(latents(with_loras(nodes, spec, (unit, 0.5))), outputs["diffusers"], atol=1e-6)


# ---- hot swap: no base reload, each file read once, bounded ------------------------------------
def test_hot_swap_never_reloads_the_base_and_reads_each_file_once(headless, nodes, lora_files):
    a, b = lora_files("a.safetensors", seed=1), lora_files("b.safetensors", seed=2)
    engine = default_engine()
    engine.unload_all()  # a fresh pipeline, so every adapter file read below is counted
    spec = base_spec(nodes)
    latents(spec)
    loads = engine.pipelines.load_count
    adapters = None
    for stack in ([(a, 1.0)], [(a, 0.3)], [(a, 0.3), (b, 1.0)], [(b, -1.0)], [], [(b, 2.0), (a, 1.0)]):
        result = run(with_loras(nodes, spec, *stack))
        adapters = adapters or adapters_of(spec)
        if stack:
            assert result.report.sections["LoRA"]["adapters"][0]["file"] == stack[0][0].rsplit("/", 1)[-1]
    assert engine.pipelines.load_count == loads, "changing LoRAs or strengths must not reload the base weights"
    assert adapters.file_loads == 2, "each LoRA file is read into the pipeline once"


def test_a_load_reads_and_converts_the_file_once(headless, nodes, lora_files, models_dir, monkeypatch):
    """Counted on the real reader and converter (the spies call through); a kohya file, so the
    conversion to diffusers' keys really runs. Later runs with the file only switch it."""
    import safetensors
    import safetensors.torch
    from diffusers import QwenImagePipeline

    name = lora_files("read-once-kohya.safetensors", seed=9, rank=4, alpha=2.0, layout="kohya")
    target = os.path.realpath(path_of(models_dir, name))
    spec = base_spec(nodes)
    base = latents(spec)
    stacks = [with_loras(nodes, spec, (name, 1.0)), with_loras(nodes, spec, (name, -0.5))]  # the node checks here
    reads, conversions = [], []

    def counting(read):
        def spy(file, *args, **kwargs):
            if os.path.realpath(str(file)) == target:
                reads.append(read.__name__)
            return read(file, *args, **kwargs)
        return spy

    convert = QwenImagePipeline.lora_state_dict.__func__

    def counting_conversion(cls, *args, **kwargs):
        conversions.append(args[0] if isinstance(args[0], str) else "tensors in memory")
        return convert(cls, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", counting(safetensors.safe_open))
    monkeypatch.setattr(safetensors.torch, "safe_open", counting(safetensors.torch.safe_open))  # diffusers' way
    monkeypatch.setattr(safetensors.torch, "load_file", counting(safetensors.torch.load_file))
    monkeypatch.setattr(QwenImagePipeline, "lora_state_dict", classmethod(counting_conversion))
    outputs = [latents(stack) for stack in stacks]
    assert reads == ["safe_open"], f"the file must be opened once per load, not {reads}"
    assert conversions == ["tensors in memory"], f"the keys must be converted once per load, not {conversions}"
    assert not torch.allclose(outputs[0], base, atol=1e-3) and not torch.allclose(outputs[1], base, atol=1e-3)
    assert torch.equal(latents(spec), base)


def test_a_changed_file_is_loaded_again(headless, nodes, lora_files, models_dir):
    name = f"{SUBDIR}/changing.safetensors"
    make_tiny_lora(models_dir / "diffusers" / "qwen-image", path_of(models_dir, name), seed=11)
    spec = with_loras(nodes, base_spec(nodes), (name, 1.0))
    first = latents(spec)
    make_tiny_lora(models_dir / "diffusers" / "qwen-image", path_of(models_dir, name), seed=12)
    stat = os.stat(path_of(models_dir, name))
    os.utime(path_of(models_dir, name), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))  # coarse clocks
    second = latents(spec)
    reference = lora_files("seed12.safetensors", seed=12)
    assert not torch.equal(first, second), "the new content of the file was not used"
    assert torch.equal(second, latents(with_loras(nodes, base_spec(nodes), (reference, 1.0))))
    stale = [n for n in adapters_of(spec).loaded_names if n.startswith("omni_changing_")]
    assert len(stale) == 1, f"the old content must be unloaded, found {stale}"


def test_loaded_adapters_are_bounded_and_evicted_ones_come_back(headless, nodes, lora_files):
    names = [lora_files(f"bound-{i}.safetensors", seed=20 + i) for i in range(3)]
    spec = base_spec(nodes)
    first = latents(with_loras(nodes, spec, (names[0], 1.0)))
    adapters = adapters_of(spec)
    saved, adapters.max_loaded = adapters.max_loaded, 2
    try:
        for name in names[1:]:
            latents(with_loras(nodes, spec, (name, 1.0)))
            transformer = default_engine().loaded(spec).pipe.transformer
            assert len(adapters.loaded_names) <= 2 and len(transformer.peft_config) <= 2
        assert not any(n.startswith("omni_bound_0_") for n in adapters.loaded_names), "LRU adapter not evicted"
        assert torch.equal(latents(with_loras(nodes, spec, (names[0], 1.0))), first), "reloaded adapter differs"
        # A run that needs more adapters than the bound still gets them all.
        latents(with_loras(nodes, spec, *[(n, 0.3) for n in names]))
        assert len(adapters.loaded_names) == 3
    finally:
        adapters.max_loaded = saved


def base_weights(module):
    return {name: p.detach().clone() for name, p in module.named_parameters() if "lora_" not in name}


def test_fused_lora_equals_unfused_and_gives_the_weights_back_exactly(headless, nodes, lora_files):
    a, b = lora_files("a.safetensors", seed=1), lora_files("b.safetensors", seed=2)
    spec = base_spec(nodes)
    stack = with_loras(nodes, spec, (a, 0.7), (b, -0.4))
    latents(stack)  # loads both adapters (the parameter names now include peft's wrappers)
    transformer = default_engine().loaded(spec).pipe.transformer
    before = base_weights(transformer)
    fused_run = run(stack)
    assert fused_run.report.sections["LoRA"]["fused_layers"] == len(tuner_layers(transformer)) > 0
    adapters = adapters_of(spec)
    adapters.fuse = False
    try:
        unfused_run = run(stack)
    finally:
        adapters.fuse = True
    assert unfused_run.report.sections["LoRA"]["fused_layers"] == 0
    assert torch.allclose(fused_run.latents, unfused_run.latents, rtol=1e-4, atol=1e-5), \
        (fused_run.latents - unfused_run.latents).abs().max()
    after = base_weights(transformer)
    assert all(torch.equal(before[name], after[name]) for name in before), "a fused weight was not put back"
    # A strength change fuses afresh from the original weights (no drift from the previous run's fuse).
    changed = latents(with_loras(nodes, spec, (a, 0.2), (b, 0.9)))
    adapters.fuse = False
    try:
        assert torch.allclose(changed, latents(with_loras(nodes, spec, (a, 0.2), (b, 0.9))), rtol=1e-4, atol=1e-5)
    finally:
        adapters.fuse = True


# ---- runs that end early leave nothing switched on ---------------------------------------------
def test_interrupted_lora_run_leaves_the_base_model(headless, nodes, lora_files):
    a = lora_files("a.safetensors", seed=1)
    spec = base_spec(nodes)
    base = latents(spec)

    def stop_after_first_step(step, _total):
        if step == 1:
            raise OmniInterrupted("stopped by the user")

    with pytest.raises(OmniInterrupted):
        run(with_loras(nodes, spec, (a, 1.0)), control=RunControl(progress=stop_after_first_step))
    assert torch.equal(latents(spec), base)


# ---- bad files: a clear error naming the file, and the model stays usable ----------------------
def assert_untouched(spec, base):
    pipe = default_engine().loaded(spec).pipe
    adapters = adapters_of(spec)
    loaded = set(adapters.loaded_names)
    configs = set(getattr(pipe.transformer, "peft_config", {}) or {})
    assert configs == loaded, f"a half-loaded adapter was left behind: {configs - loaded}"
    assert torch.equal(latents(spec), base)


def test_lora_for_another_family_is_refused_by_name(headless, nodes, lora_files):
    flux = lora_files("flux-style.safetensors", family="flux", seed=4)
    spec = base_spec(nodes)
    base = latents(spec)
    with pytest.raises(OmniInputError) as error:
        latents(with_loras(nodes, spec, (flux, 1.0)))
    message = str(error.value)
    # diffusers alone would load its double-stream layers (same names in both families) and warn.
    assert "flux-style.safetensors" in message and "Qwen-Image's transformer" in message
    assert "FLUX.1" in message and "single_transformer_blocks" in message
    assert_untouched(spec, base)


def test_lora_with_no_matching_keys_names_what_it_looks_like(headless, nodes, models_dir):
    from safetensors.torch import save_file

    name = f"{SUBDIR}/sdxl-style.safetensors"
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{stem}.lora_down.weight": torch.randn(4, 320), f"{stem}.lora_up.weight": torch.randn(320, 4),
               f"{stem}.alpha": torch.tensor(4.0)}, str(path_of(models_dir, name)))
    spec = base_spec(nodes)
    base = latents(spec)
    with pytest.raises(OmniInputError, match=r"sdxl-style\.safetensors.*SD1\.x/SDXL"):
        latents(with_loras(nodes, spec, (name, 1.0)))
    assert_untouched(spec, base)


@pytest.mark.parametrize("damage, expected", [
    ("in_features", r"shape mismatch at transformer\.transformer_blocks\.0\.attn\.to_q: the model's layer maps "
                    r"64 -> 64 features, the LoRA's lora_A \[4, 96\] / lora_B \[64, 4\] map 96 -> 64"),
    ("rank", r"rank mismatch at transformer\.transformer_blocks\.0\.attn\.to_q: lora_A \[4, 64\] has rank 4 "
             r"but lora_B \[64, 8\] has rank 8"),
])
def test_shape_and_rank_mismatches_name_the_layer_and_both_shapes(headless, nodes, lora_files, models_dir,
                                                                   damage, expected):
    from safetensors.torch import load_file, save_file

    good = lora_files("a.safetensors", seed=1)
    tensors = load_file(str(path_of(models_dir, good)))
    key = "transformer.transformer_blocks.0.attn.to_q.lora_{}.weight"
    if damage == "in_features":
        tensors[key.format("A")] = torch.randn(4, 96)
    else:
        tensors[key.format("B")] = torch.randn(64, 8)
    name = f"{SUBDIR}/damaged-{damage}.safetensors"
    save_file(tensors, str(path_of(models_dir, name)))
    spec = base_spec(nodes)
    base = latents(spec)
    with pytest.raises(OmniInputError, match=expected) as error:
        latents(with_loras(nodes, spec, (name, 1.0)))
    assert f"damaged-{damage}.safetensors" in str(error.value)
    assert_untouched(spec, base)


def test_a_failure_inside_diffusers_leaves_no_half_loaded_adapter(headless, nodes, lora_files, models_dir):
    """The keys fit, but peft cannot adapt one of the layers: the layers it already wrapped are removed."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path_of(models_dir, lora_files("a.safetensors", seed=1))))
    # norm_q is an RMSNorm: it exists and has 16 features, but peft has no LoRA layer for it.
    tensors["transformer.transformer_blocks.1.attn.norm_q.lora_A.weight"] = torch.randn(4, 16)
    tensors["transformer.transformer_blocks.1.attn.norm_q.lora_B.weight"] = torch.randn(16, 4)
    name = f"{SUBDIR}/unsupported-layer.safetensors"
    save_file(tensors, str(path_of(models_dir, name)))
    spec = base_spec(nodes)
    base = latents(spec)
    with pytest.raises(OmniInputError, match=r"unsupported-layer\.safetensors'?: diffusers could not load it"):
        latents(with_loras(nodes, spec, (name, 1.0)))
    assert_untouched(spec, base)
    if not adapters_of(spec).loaded_names:
        assert tuner_layers(default_engine().loaded(spec).pipe.transformer) == []


# ---- components -------------------------------------------------------------------------------
def test_wan_second_expert_takes_the_lora_only_when_asked(headless, nodes, lora_files):
    lora = lora_files("wan.safetensors", family="wan2.2", seed=5)
    spec = base_spec(nodes, "wan2.2")
    base = latents(spec, family="wan2.2")
    first = latents(with_loras(nodes, spec, (lora, 1.0, "transformer")), family="wan2.2")
    second = latents(with_loras(nodes, spec, (lora, 1.0, "transformer_2")), family="wan2.2")
    assert not torch.allclose(first, base, atol=1e-4) and not torch.allclose(second, base, atol=1e-4)
    assert not torch.allclose(first, second, atol=1e-4)
    pipe = default_engine().loaded(spec).pipe
    adapters = adapters_of(spec)
    into_second = [a for a in adapters._loaded.values() if a.into == "transformer_2"]
    assert [a.components for a in into_second] == [("transformer_2",)]
    assert into_second[0].name in pipe.transformer_2.peft_config
    assert into_second[0].name not in (getattr(pipe.transformer, "peft_config", None) or {})
    assert torch.equal(latents(spec, family="wan2.2"), base)


def test_flux_text_encoder_part_acts_only_where_chosen(headless, nodes, lora_files):
    lora = lora_files("flux-te.safetensors", family="flux", seed=6, text_encoder=True)
    spec = base_spec(nodes, "flux")
    outputs = {c: latents(with_loras(nodes, spec, (lora, 1.0, c)), family="flux")
               for c in ("auto", "transformer", "text_encoder")}
    base = latents(spec, family="flux")
    assert len({tuple(v.flatten()[:64].tolist()) for v in [base, *outputs.values()]}) == 4, \
        "auto, transformer-only and text-encoder-only must each differ from the others and from the base"
    adapters = adapters_of(spec)
    assert adapters.file_loads == 1, "one load of the file serves every component choice"
    (adapter,) = adapters._loaded.values()
    assert adapter.components == ("transformer", "text_encoder")


@pytest.mark.parametrize("family", sorted(k for k, f in FAMILIES.items() if not f.requires_image))
def test_every_family_takes_a_tiny_lora(headless, nodes, lora_files, family):
    lora = lora_files(f"{family}.safetensors", family=family, seed=8)
    spec = base_spec(nodes, family)
    base = latents(spec, family=family)
    assert not torch.allclose(latents(with_loras(nodes, spec, (lora, 1.0)), family=family), base, atol=1e-4)
    assert torch.equal(latents(spec, family=family), base)


# ---- FP8 layers: adapter factors stay in the compute dtype -------------------------------------
class _Float8StoredLinear(torch.nn.Linear):
    """A stand-in for any layer storing float8 weights without a `compute_dtype` (peft would then
    create the LoRA factors in float8, see lora/precision.py). The FP8 feature's own FP8Linear
    declares compute_dtype; the guard covers every other such layer."""

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), self.bias)


def test_adapter_factors_stay_in_compute_dtype_on_float8_layers(headless, nodes, lora_files):
    from omni_backend.engine import Engine

    a = lora_files("a.safetensors", seed=1)
    engine = Engine()  # its own pipeline: the layers below are swapped in place
    spec = base_spec(nodes)
    pipe = engine.loaded(spec).pipe
    swapped = []
    for block in pipe.transformer.transformer_blocks:
        for name in ("to_q", "to_k"):
            plain = getattr(block.attn, name)
            layer = _Float8StoredLinear(plain.in_features, plain.out_features)
            layer.weight = torch.nn.Parameter(plain.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
            layer.bias = plain.bias
            setattr(block.attn, name, layer)
            swapped.append(layer)
    request = GenerationRequest(prompt="a red circle", steps=2, width=64, height=48, guidance=1.0, seed=3)
    base = engine.generate(spec, request).latents
    generation = engine.generate(with_loras(nodes, spec, (a, 1.0)), request)  # fails if factors were fp8
    adapted = generation.latents
    assert torch.isfinite(adapted).all() and not torch.allclose(adapted, base, atol=1e-3)
    # Fused LoRA: the high-precision layers take the adapter into their weights, the FP8 ones stay unfused.
    assert generation.report.sections["LoRA"]["fused_layers"] == len(tuner_layers(pipe.transformer)) - len(swapped)
    wrapped = pipe.transformer.transformer_blocks[0].attn.to_q
    (name,) = wrapped.lora_A.keys()
    assert wrapped.get_base_layer() is swapped[0] and swapped[0].weight.dtype == torch.float8_e4m3fn
    assert wrapped.lora_A[name].weight.dtype == wrapped.lora_B[name].weight.dtype == torch.float32
    assert not any(hasattr(layer, "compute_dtype") for layer in swapped), "the guard must clean up after itself"
    assert torch.equal(engine.generate(spec, request).latents, base)
    engine.unload_all()
