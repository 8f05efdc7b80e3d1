"""Sample's positive / negative CONDITIONING (ComfyUI's own text encoding) instead of the prompt text.

The conditioning here is the family pipeline's own encode_prompt output, laid out as ComfyUI's text
encoder lays it out (tests/comfyui/test_comfyui_text_encode.py checks ComfyUI's encoder gives those numbers):
the latents must equal the prompt-text run's exactly. Families whose encoding differs from ComfyUI's
are refused with the reason, before any weights load.
"""

from __future__ import annotations

import pytest
import torch

from omni_backend.engine import default_engine
from omni_backend.errors import OmniInputError
from omni_backend.families import FAMILIES
from omni_backend.run.conditioning import TextEmbedding
from omni_backend.workers import wire

from image_support import picture
from parallel_support import request_for, spec_for

ACCEPTING = [key for key, family in FAMILIES.items() if family.conditioning_refusal is None]
REFUSING = [key for key, family in FAMILIES.items() if family.conditioning_refusal is not None]


def comfy_conditioning(pipe, family_key: str, text: str) -> list:
    """The pipeline's own encoding of `text` in ComfyUI's CONDITIONING layout for that family."""
    with torch.inference_mode():
        if family_key == "qwen-image":
            embeds, mask = pipe.encode_prompt(text, device=pipe.device, max_sequence_length=512)
            assert mask is None, "one prompt: no padding (ComfyUI then drops the mask too)"
            return [[embeds, {"pooled_output": None}]]
        if family_key == "z-image":
            (embeds,), _ = pipe.encode_prompt(text, device=pipe.device, do_classifier_free_guidance=False)
            return [[embeds.unsqueeze(0), {"pooled_output": None}]]
        if family_key == "flux2-klein":
            layers = FAMILIES[family_key].call_kwargs(pipe, request_for(family_key)).get("text_encoder_out_layers")
            embeds, _ids = pipe.encode_prompt(text, device=pipe.device, max_sequence_length=512,
                                              **({"text_encoder_out_layers": layers} if layers else {}))
            chat = pipe.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True, enable_thinking=False)
            mask = pipe.tokenizer(chat, padding="max_length", max_length=512, truncation=True,
                                  return_tensors="pt").attention_mask
            return [[embeds, {"pooled_output": None, "attention_mask": mask}]]  # padded to 512, as ComfyUI
        if family_key.startswith("wan2.2"):
            embeds, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=512,
                                           device=pipe.device)
            tokens = len(pipe.tokenizer(text, add_special_tokens=True).input_ids)
            assert embeds[0, tokens:].abs().max() == 0, "the pipeline pads with zero vectors"
            return [[embeds[:, :tokens], {"pooled_output": None}]]  # ComfyUI: unpadded
    raise AssertionError(f"no ComfyUI layout written for {family_key}")


@pytest.mark.parametrize("family_key", ACCEPTING)
def test_conditioning_gives_the_prompt_texts_latents(headless, nodes, tiny_settings, family_key):
    settings = tiny_settings(family_key, steps=2)
    images = {"image": picture(1)} if FAMILIES[family_key].requires_image else {}
    (spec,) = nodes["OmniLoadModel"]().load(family_key, "auto", "auto")
    sample = nodes["OmniSample"]()
    from_text = sample.sample(spec, **settings, **images)["result"][0]["samples"]

    pipe = default_engine().loaded(spec).pipe
    positive = comfy_conditioning(pipe, family_key, settings["prompt"])
    # FLUX.2-klein's pipeline takes no negative text and encodes "" itself: that is the text-run's negative.
    takes_negative = FAMILIES[family_key].guidance.takes_negative_prompt
    negative = comfy_conditioning(pipe, family_key, settings["negative_prompt"] if takes_negative else "")
    out = sample.sample(spec, **dict(settings, prompt="", negative_prompt=""), **images,
                        positive=positive, negative=negative)
    assert torch.equal(out["result"][0]["samples"], from_text)
    assert "prompt embeddings from CONDITIONING" in out["ui"]["text"][0]

    other = comfy_conditioning(pipe, family_key, "a green square")
    changed = sample.sample(spec, **settings, **images, positive=other, negative=negative)["result"][0]["samples"]
    assert not torch.equal(changed, from_text), "the conditioning, not the prompt text, drives the run"


@pytest.mark.parametrize("family_key", REFUSING)
def test_families_whose_encoding_differs_refuse_it_with_the_reason(headless, nodes, tiny_settings, family_key):
    (spec,) = nodes["OmniLoadModel"]().load(family_key, "auto", "auto")
    conditioning = [[torch.zeros(1, 7, 32), {"pooled_output": None}]]
    images = {"image": picture(1)} if FAMILIES[family_key].requires_image else {}
    with pytest.raises(OmniInputError, match="cannot take ComfyUI's text encoding") as error:
        nodes["OmniSample"].check_inputs(spec, **tiny_settings(family_key), **images, positive=conditioning,
                                         negative=conditioning)
    assert error.value.input_name == "positive"
    assert FAMILIES[family_key].conditioning_refusal in str(error.value)
    assert "type the prompt into Sample" in str(error.value)


@pytest.mark.parametrize("change, name, fragment", [
    (dict(negative=None), "negative", "needs the negative CONDITIONING too"),
    (dict(positive=None), "negative", "without positive"),
    (dict(positive=[[torch.zeros(1, 5, 48), {}]]), "positive", "takes text embeddings 32 wide"),
    (dict(positive=[[torch.zeros(1, 5, 32), {"reference_latents": [torch.zeros(1, 16, 8, 8)]}]]), "positive",
     "more than the prompt's text"),
    (dict(positive=[[torch.zeros(1, 5, 32), {}], [torch.zeros(1, 5, 32), {}]]), "positive",
     "combination of several"),
    (dict(negative=[[torch.zeros(2, 5, 32), {}]]), "negative", "batch of prompts"),
])
def test_bad_conditioning_is_refused_naming_the_input(headless, nodes, tiny_settings, change, name, fragment):
    (spec,) = nodes["OmniLoadModel"]().load("qwen-image", "auto", "auto")
    inputs = dict(positive=[[torch.zeros(1, 5, 32), {}]], negative=[[torch.zeros(1, 3, 32), {}]])
    inputs.update(change)
    with pytest.raises(OmniInputError, match=fragment) as error:
        nodes["OmniSample"].check_inputs(spec, **tiny_settings("qwen-image"), **inputs)
    assert error.value.input_name == name


def test_negative_is_optional_without_guidance(headless, nodes, tiny_settings):
    (spec,) = nodes["OmniLoadModel"]().load("qwen-image", "auto", "auto")
    request = nodes["OmniSample"].check_inputs(spec, **tiny_settings("qwen-image", guidance=1.0),
                                               positive=[[torch.zeros(1, 5, 32), {}]])
    assert request.positive.tokens == 5 and request.negative is None


def test_embeddings_cross_the_worker_wire():
    embeds, mask = torch.randn(1, 6, 32), torch.tensor([[1, 1, 1, 1, 0, 0]])
    request = request_for("qwen-image", positive=TextEmbedding(embeds, mask),
                          negative=TextEmbedding(torch.randn(1, 3, 32), role="negative"))
    back = wire.decode(wire.encode(request))
    assert torch.equal(back.positive.embeds, embeds) and torch.equal(back.positive.mask, mask)
    assert back.negative.role == "negative" and back.negative.mask is None
    assert back.positive.kept().shape == (4, 32)


@pytest.mark.slow
def test_cfg_parallel_ranks_get_the_embeddings(models_dir, engine):
    """Two ranks, the positive branch on one and the negative on the other: the run equals the
    single-process prompt-text run, so both embeddings reached the workers intact."""
    single = spec_for(models_dir, "qwen-image")
    text_request = request_for("qwen-image", steps=2)
    expected = engine.generate(single, text_request).latents
    pipe = engine.loaded(single).pipe
    positive = comfy_conditioning(pipe, "qwen-image", text_request.prompt)[0][0]
    negative = comfy_conditioning(pipe, "qwen-image", text_request.negative_prompt)[0][0]
    request = request_for("qwen-image", steps=2, prompt="", negative_prompt="", positive=TextEmbedding(positive),
                          negative=TextEmbedding(negative, role="negative"))
    got = engine.generate(spec_for(models_dir, "qwen-image", cfg_parallel=2), request).latents
    assert torch.equal(got, expected)


@pytest.mark.slow
def test_docs_conditioning_table_agrees_with_the_families():
    """The CONDITIONING table (docs/nodes.md) says yes exactly for the families that accept it."""
    from pathlib import Path

    rows = {"Qwen-Image": ["qwen-image"], "Z-Image": ["z-image"], "FLUX.2-klein": ["flux2-klein"],
            "Wan2.2 T2V, I2V, TI2V": ["wan2.2", "wan2.2-i2v", "wan2.2-ti2v"],
            "Qwen-Image-Edit, -2509, -2511": ["qwen-image-edit", "qwen-image-edit-2509", "qwen-image-edit-2511"],
            "FLUX.1-dev": ["flux"],
            "Stable-Diffusion-3.5": ["sd3"], "Stable-Audio-Open": ["stable-audio"],
            "LongCat-Image, -Edit": ["longcat-image", "longcat-image-edit"], "Ovis-Image": ["ovis-image"],
            "GLM-Image": ["glm-image"], "Qwen-Image-Layered": ["qwen-image-layered"]}
    page = (Path(__file__).resolve().parents[2] / "docs" / "nodes.md").read_text()
    table = page[page.index("| Model | CONDITIONING | Why |"):].split("\n\n")[0].splitlines()[2:]
    said = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table}
    assert set(said) == set(rows)
    assert sorted(key for keys in rows.values() for key in keys) == sorted(FAMILIES)
    for label, keys in rows.items():
        for key in keys:
            assert (said[label] == "yes") == (FAMILIES[key].conditioning_refusal is None), key


def test_the_graph_validator_refuses_before_the_encoder_has_run(headless, nodes, tiny_settings):
    """`omni-diffusion validate` passes a connected CONDITIONING as LINKED: the model's refusal and a
    missing negative are found without any tensor."""
    from omni_diffusion_nodes.graph.node_contract import LINKED

    check = nodes["OmniSample"].check_inputs
    (flux,) = nodes["OmniLoadModel"]().load("flux", "auto", "auto")
    with pytest.raises(OmniInputError, match="cannot take ComfyUI's text encoding"):
        check(flux, **tiny_settings("flux"), positive=LINKED, negative=LINKED)
    (qwen,) = nodes["OmniLoadModel"]().load("qwen-image", "auto", "auto")
    with pytest.raises(OmniInputError, match="needs the negative CONDITIONING too"):
        check(qwen, **tiny_settings("qwen-image"), positive=LINKED)
    assert check(qwen, **tiny_settings("qwen-image"), positive=LINKED, negative=LINKED).positive is None
