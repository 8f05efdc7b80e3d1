"""Broken or hostile weight files are refused by name, before anything reads a weight.

Every .safetensors reader (ComfyUI's single files, LoRA files) checks the header completely against
safetensors' own rules first (omni_backend/files/safetensors_header.py), so `omni-diffusion validate`
names the file and the rule instead of a traceback, and nothing broken reaches a run.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from omni_backend.errors import OmniInputError
from omni_backend.lora.files import check_lora_file
from omni_backend.single_file.comfy_layout import template_file_names
from omni_backend.single_file.weights_file import inspect_weights_file
from omni_diffusion_nodes.headless import cli
from omni_diffusion_nodes.headless.recipes import comfy_file_workflows

GOOD_ENTRY = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


def write_raw(path, header, data: bytes = b"\0" * 16):
    """A .safetensors file with exactly this header (any JSON value) and these data bytes."""
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


HEADERS = {  # case -> (header, data bytes, words the refusal must hold)
    "json-list": ([GOOD_ENTRY], b"\0" * 16, "JSON list"),
    "no-data-offsets": ({"w": {"dtype": "F32", "shape": [2, 2]}}, b"\0" * 16, "no data_offsets"),
    "entry-is-a-number": ({"w": 7}, b"", "JSON number"),
    "negative-offsets": ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [-16, 0]}}, b"\0" * 16,
                         "data_offsets"),
    "unknown-dtype": ({"w": {"dtype": "F33", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype"),
    "dtype-not-text": ({"w": {"dtype": 4, "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype"),
    "end-before-begin": ({"w": {"dtype": "U8", "shape": [0], "data_offsets": [16, 0]}}, b"\0" * 16, "before it begins"),
    "size-mismatch": ({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, b"\0" * 16, "needs 24 bytes"),
    "negative-shape": ({"w": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}, b"\0" * 16, "shape"),
    "shape-not-a-list": ({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}, b"\0" * 16, "shape"),
    "gap": ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [4, 20]}}, b"\0" * 20, "gap"),
    "overlap": ({"a": GOOD_ENTRY, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16,
                "overlaps"),
    "past-the-end": ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8, "tensors need"),
    "bytes-after-the-tensors": ({"w": GOOD_ENTRY}, b"\0" * 24, "not covered"),
    "metadata-not-text": ({"__metadata__": {"config": 1}, "w": GOOD_ENTRY}, b"\0" * 16, "__metadata__"),
    "metadata-a-list": ({"__metadata__": ["x"], "w": GOOD_ENTRY}, b"\0" * 16, "__metadata__"),
    "duplicate-name": (b'{"w": ' + json.dumps(GOOD_ENTRY).encode() + b', "w": ' + json.dumps(GOOD_ENTRY).encode()
                       + b"}", b"\0" * 16, "twice"),
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_a_broken_header_is_refused_naming_the_file_and_the_rule(tmp_path, case):
    header, data, words = HEADERS[case]
    path = write_raw(tmp_path / f"dit-{case}.safetensors", header, data)
    with pytest.raises(OmniInputError) as info:
        inspect_weights_file(path, "diffusion_model")
    message = str(info.value)
    assert info.value.input_name == "diffusion_model" and path.name in message and words in message, message
    assert "Fix:" in message
    with pytest.raises(OmniInputError) as info:  # the LoRA reader takes the same check
        check_lora_file(path)
    assert info.value.input_name == "lora_name" and words in str(info.value), str(info.value)


def test_the_checker_takes_every_valid_file(tmp_path):
    path = tmp_path / "good.safetensors"
    save_file({"a.weight": torch.zeros(3, 2), "b": torch.zeros(0), "c": torch.tensor(1.5, dtype=torch.bfloat16),
               "d": torch.zeros(2, dtype=torch.float8_e4m3fn)}, path, metadata={"config": "{}"})
    file = inspect_weights_file(path, "diffusion_model")
    assert file.tensors["a.weight"] == ("F32", (3, 2)) and file.metadata == {"config": "{}"}
    assert check_lora_file(path).keys
    empty = write_raw(tmp_path / "empty.safetensors", {}, b"")
    assert inspect_weights_file(empty, "vae").tensors == {}


@pytest.fixture()
def flux_files_dir(models_dir, tmp_path):
    """A models/ folder with FLUX.1's ComfyUI files whose diffusion model file is ours to break."""
    root = tmp_path / "models"
    for folder in models_dir.iterdir():
        if folder.name != "diffusion_models":
            (root / folder.name).parent.mkdir(parents=True, exist_ok=True)
            (root / folder.name).symlink_to(folder, target_is_directory=True)
    (root / "diffusion_models").mkdir()
    return root


def break_header(good, target, case: str):
    """`good`'s tensors with their header broken as `case` says, at the first tensor entry."""
    raw = good.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + length]), raw[8 + length:]
    first = next(key for key in header if key != "__metadata__")
    if case == "json-list":
        header = list(header.values())
    elif case == "no-data-offsets":
        del header[first]["data_offsets"]
    elif case == "entry-is-a-number":
        header[first] = 7
    elif case == "negative-offsets":
        header[first]["data_offsets"] = [-8, header[first]["data_offsets"][1]]
    elif case == "unknown-dtype":
        header[first]["dtype"] = "F33"
    return write_raw(target, header, data)


BROKEN_SINGLE_FILES = {"json-list": "JSON list", "no-data-offsets": "no data_offsets",
                       "entry-is-a-number": "JSON number", "negative-offsets": "data_offsets",
                       "unknown-dtype": "unknown dtype"}


@pytest.mark.parametrize("case", sorted(BROKEN_SINGLE_FILES))
def test_validate_and_run_name_a_broken_single_file(headless, flux_files_dir, models_dir, tmp_path, capsys, case):
    words = BROKEN_SINGLE_FILES[case]
    name = template_file_names("flux", "bf16")["diffusion_model"]
    break_header(models_dir / "diffusion_models" / name, flux_files_dir / "diffusion_models" / name, case)
    workflow = tmp_path / "flux-comfy-files.json"
    workflow.write_text(json.dumps(comfy_file_workflows()["flux-comfy-files.json"]))
    arguments = [str(workflow), "--models-dir", str(flux_files_dir)]
    assert cli.main(["validate", *arguments]) == 1
    checked = capsys.readouterr().out
    assert name in checked and words in checked and "Traceback" not in checked, checked
    assert cli.main(["run", *arguments, "--output-dir", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert name in error and words in error and "Fix:" in error and "Traceback" not in error, error
