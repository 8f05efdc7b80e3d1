"""Sample shows what every model shares; the options only some models take come from the option node their
family declares, each option declared once and read alike by the node, Sample's check, the graph check and
the Python API. Decoders come one per output kind, so no output is ever blocked."""

from __future__ import annotations

import pytest
import torch
from image_support import picture, transparency

from omni_backend import Omni
from omni_backend.errors import OmniInputError
from omni_backend.families import FAMILIES, option_groups
from omni_diffusion_nodes.graph.check import check_workflow
from omni_diffusion_nodes.headless.builder import WorkflowBuilder
from omni_diffusion_nodes.headless.node_classes import all_node_classes
from omni_diffusion_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

SHARED = dict(prompt="a red disc on a blue wall", negative_prompt=" ", seed=5, steps=2, guidance=4.0, width=64,
              height=48, batch_size=1)


def test_sample_shows_what_every_model_shares_and_one_options_input():
    inputs = NODE_CLASS_MAPPINGS["OmniSampleV2"].INPUT_TYPES()
    shown = [*inputs["required"], *inputs["optional"]]
    # 12 shared (CONDITIONING as core's positive/negative pair) + the option node's link
    assert shown == ["model", "prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height",
                     "batch_size", "image", "positive", "negative", "options"]
    assert inputs["optional"]["options"][0] == "OMNI_OPTIONS"


def test_every_option_is_declared_once_and_every_group_has_its_node():
    names = [option.name for group in option_groups() for option in group.options]
    assert len(names) == len(set(names)), "an option name belongs to one group"
    for group in option_groups():
        node = NODE_CLASS_MAPPINGS[group.node_id]
        declared = node.INPUT_TYPES()
        assert {*declared["required"], *declared.get("optional", {})} == {o.name for o in group.options}
        assert NODE_DISPLAY_NAME_MAPPINGS[group.node_id] == group.title and node.RETURN_TYPES == ("OMNI_OPTIONS",)
    taken = {group.key for family in FAMILIES.values() for group in family.option_groups}
    assert taken == {group.key for group in option_groups()}


@pytest.mark.slow
def test_the_option_node_gives_the_same_request_as_the_old_samples_widgets(headless, nodes):
    """Layered options through Omni Layered Options and through the old Sample's widgets: the same latents;
    the Python API's keywords the same again."""
    (model,) = nodes["OmniLoadModel"]().load("qwen-image-layered", "fp32", "cpu")
    (options,) = nodes["OmniLayeredOptions"]().options(layers=2, resolution="640", mask=transparency())
    new = nodes["OmniSampleV2"]().sample(model, **SHARED, image=picture(1), options=options)["result"][0]
    old = nodes["OmniSample"]().sample(model, **SHARED, frames=1, image=picture(1), layers=2, resolution="640",
                                       mask=transparency())["result"][0]
    assert new["samples"].shape[2] == 3, "two layers and the composite"
    assert torch.equal(new["samples"], old["samples"])
    images, masks = nodes["OmniVAEDecodeLayers"]().decode(model, new, 0, 64)["result"]
    assert images.shape[0] == masks.shape[0] == 2


def test_the_python_api_takes_the_same_options_by_name(headless, models_dir):
    omni = Omni(model=str(models_dir / "diffusers" / "stable-audio"), dtype="fp32", device="cpu")
    with pytest.raises(OmniInputError) as info:
        omni.generate("a hammer", num_inference_steps=2, layers=2)
    assert info.value.input_name == "layers" and "Stable-Audio-Open takes no option 'layers'" in str(info.value)
    short = omni.generate("a hammer", num_inference_steps=2, audio_end_in_s=1.0)
    assert short.audio["waveform"].shape[-1] == 800  # 1 s at the tiny model's 800 Hz
    omni.engine.unload_all()


def test_a_model_refuses_an_option_node_it_does_not_take_by_name(headless, nodes):
    (model,) = nodes["OmniLoadModel"]().load("qwen-image", "fp32", "cpu")
    for node_id, values in (("OmniVideoOptions", dict(frames=5)), ("OmniAudioWindow", dict(seconds=1.0, start=0.0))):
        (options,) = nodes[node_id]().options(**values)
        with pytest.raises(OmniInputError) as info:
            nodes["OmniSampleV2"]().check_inputs(model, **SHARED, options=options)
        assert info.value.input_name == "options" and f"Qwen-Image takes no {NODE_DISPLAY_NAME_MAPPINGS[node_id]}" \
            in str(info.value)
    (t2v,) = nodes["OmniLoadModel"]().load("wan2.2", "fp32", "cpu")
    (options,) = nodes["OmniVideoOptions"]().options(frames=5, last_image=picture(2))
    with pytest.raises(OmniInputError, match="takes no last frame"):
        nodes["OmniSampleV2"]().check_inputs(t2v, **SHARED, options=options)
    (options,) = nodes["OmniVideoOptions"]().options(frames=6)
    with pytest.raises(OmniInputError, match="4\\*k\\+1") as info:
        nodes["OmniSampleV2"]().check_inputs(t2v, **SHARED, options=options)
    assert info.value.input_name == "frames"


def _graph(family: str, option_node: str | None, decoder: str, **option_values) -> dict:
    builder = WorkflowBuilder(all_node_classes())
    model = builder.add("OmniLoadModel", model_name=family)
    sample = builder.add("OmniSampleV2", **SHARED)
    decode = builder.add(decoder)
    builder.chain((model, sample, "model"), (model, decode, "model"), (sample, decode, "samples"))
    save = builder.add("SaveAudio" if decoder == "OmniVAEDecodeAudio" else "PreviewImage")
    builder.connect(decode, save, "audio" if decoder == "OmniVAEDecodeAudio" else "images")
    if option_node:
        options = builder.add(option_node, **option_values)
        builder.connect(options, sample, "options")
        if option_node == "OmniLayeredOptions":
            image = builder.add("LoadImage", image="example.png")
            builder.chain((image, sample, "image"))
            builder.connect(image, options, "mask", output_slot=1)
    return builder.to_json()


def test_the_graph_check_reads_the_option_nodes_and_the_decoders(headless):
    classes = all_node_classes()
    assert check_workflow(_graph("qwen-image-layered", "OmniLayeredOptions", "OmniVAEDecodeLayers", layers=2),
                          classes, NODE_DISPLAY_NAME_MAPPINGS) == [], "a linked mask is only counted"
    problems = check_workflow(_graph("z-image", "OmniVideoOptions", "OmniVAEDecodeImages", frames=5), classes,
                              NODE_DISPLAY_NAME_MAPPINGS)
    assert [(p.title, p.problem.split(" = ")[0]) for p in problems] == [("Sample", "options")], problems
    problems = check_workflow(_graph("wan2.2", "OmniVideoOptions", "OmniVAEDecodeImages", frames=6), classes,
                              NODE_DISPLAY_NAME_MAPPINGS)
    assert [p.problem.split(" = ")[0] for p in problems] == ["frames"], problems
    problems = check_workflow(_graph("stable-audio", None, "OmniVAEDecodeImages"), classes, NODE_DISPLAY_NAME_MAPPINGS)
    assert [p.problem.split(" = ")[0] for p in problems] == ["model"] and "Omni VAE Decode Audio" in problems[0].fix
