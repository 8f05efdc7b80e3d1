"""What only a real ComfyUI server shows (the `comfyui` tier; see tests/comfyui_host.py): the graph-check
route, refusals at queue and run time, progress on the websocket, /interrupt (one process and two
ranks), /free, and this pack's outputs in ComfyUI's core nodes.

Prompts are queued over the HTTP API, as scripts and other tools queue them; the browser's own
queueing is tests/comfyui/test_real_comfyui.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_host import error_of, on_every_version, on_newest, tier
from omni_diffusion_nodes.graph.workflow_format import is_ui_format, load_workflow
from omni_diffusion_nodes.headless.runner import configure, to_prompt
from omni_diffusion_nodes.headless.validate import validate_workflow

pytestmark = tier
PACK_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = PACK_ROOT / "tests" / "workflow_fixtures"
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))


def small(path: str | Path, **sample) -> dict:
    """A shipped workflow as an API prompt, with Sample's size and steps set for a quick run."""
    prompt = to_prompt(load_workflow(PACK_ROOT / "workflows" / path))
    node = next(n for n in prompt.values() if n["class_type"] == "OmniSampleV2")
    node["inputs"].update({"steps": 3, "width": 64, "height": 64, **sample})
    return prompt


def node_id(prompt: dict, class_type: str) -> str:
    return next(i for i, n in prompt.items() if n["class_type"] == class_type)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


class Events:
    """The server's websocket messages for one client id, collected on a thread."""

    def __init__(self, server, client_id: str):
        import websocket  # websocket-client

        self.client_id = client_id
        self.messages: list[tuple[float, dict]] = []
        self.socket = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}",
                                                  timeout=600)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                frame = self.socket.recv()
            except Exception:  # closed
                return
            if isinstance(frame, str) and frame:  # binary frames are previews; "" comes with the close
                self.messages.append((time.monotonic(), json.loads(frame)))

    def of(self, kind: str, prompt_id: str | None = None) -> list[tuple[float, dict]]:
        return [(at, m["data"]) for at, m in self.messages if m.get("type") == kind
                and (prompt_id is None or m["data"].get("prompt_id") == prompt_id)]

    def wait_for(self, predicate, timeout: float = 600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise TimeoutError(f"no such websocket message in {timeout} s; last: {self.messages[-5:]}")

    def close(self):
        self.socket.close()


def queue_with(server, prompt: dict, client_id: str) -> str:
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": client_id})
    assert status == 200, body
    return json.loads(body)["prompt_id"]


def clear_execution_cache(server):
    """POST /free {"free_memory": true}: ComfyUI forgets its cached node outputs (the next identical
    prompt runs again) once its queue is idle; then a no-op prompt shows the flag was taken."""
    server.post("/free", {"free_memory": True})
    time.sleep(2)  # the prompt worker reads the flag when it next wakes (at most 1 s)


# ---- the graph check ----------------------------------------------------------------------------
def _verdict(problems) -> dict:
    found: dict = {}
    for problem in problems:
        found.setdefault(str(problem["node"]), set()).add(problem["rule"] or problem["problem"].split(":")[0])
    return found


@on_every_version
def test_the_check_route_gives_the_validate_verdict_on_every_workflow(comfyui_server, models_dir):
    """The editor's warnings come from this route: for every shipped workflow and every UI-format
    fixture it answers (never 500) with the problems `omni-diffusion validate` reports at this pack's
    nodes."""
    configure(models_dir=models_dir)
    files = WORKFLOWS + sorted(FIXTURES.glob("*.json"))
    checked = 0
    for path in files:
        workflow = json.loads(path.read_text())
        if path.name == "expected.json" or not is_ui_format(workflow):
            continue
        status, body = comfyui_server.post("/api/omni_diffusion/check", workflow)
        assert status == 200, (path.name, status, body[:300])
        answer = json.loads(body)
        pack_nodes = {str(n["id"]) for n in workflow["nodes"] if str(n["type"]).startswith("Omni")}
        expected = _verdict(p.as_dict() for p in validate_workflow(workflow) if p.node_id in pack_nodes)
        got = _verdict(p for problems in answer["problems"].values() for p in problems)
        assert got == expected, path.name
        if path in WORKFLOWS:  # a shipped workflow is clean, and Load Omni Model says what its model supports
            loaders = {str(n["id"]) for n in workflow["nodes"] if n["type"] == "OmniLoadModel"}
            assert got == {} and set(answer["support"]) == loaders, path.name
            assert all(lines and not lines[0].startswith("cannot load") for lines in answer["support"].values())
        checked += 1
    assert checked >= len(WORKFLOWS) + 10


@on_every_version
def test_the_extension_files_are_served(comfyui_server):
    extensions = comfyui_server.get_json("/extensions")
    for name in ("omni_extension.js", "graph_request.js"):
        path = next(e for e in extensions if e.endswith(f"/omni-diffusion-nodes/{name}"))
        status, body = comfyui_server.get(path)
        assert status == 200 and (b"export function" in body or b"registerExtension" in body)
    assert not any(e.endswith(".mjs") for e in extensions), "the node tests are not loaded as extensions"


@on_every_version
def test_node_names_do_not_collide_with_core(comfyui_server):
    """Two entries of one name in the node search: ours must not take a core node's display name."""
    info = comfyui_server.get_json("/object_info")
    ours = {name: n["display_name"] for name, n in info.items() if n["python_module"].startswith("custom_nodes")}
    core = {n["display_name"] for name, n in info.items() if not n["python_module"].startswith("custom_nodes")}
    assert len(ours) >= 10 and not (set(ours.values()) & core), set(ours.values()) & core
    assert ours["OmniLoadLoRA"] == "Load Omni LoRA"


# ---- refusals ------------------------------------------------------------------------------------
@on_every_version
def test_a_fault_of_two_inputs_of_one_node_fails_at_that_node_naming_it(comfyui_server):
    """fp8_text_encoder without an fp8 mode: no VALIDATE_INPUTS (ComfyUI would repeat its verdict once
    per input named), so the node fails when it runs, with the input, value and fix; the server log
    has the message on one line and no traceback."""
    prompt = to_prompt(load_workflow(FIXTURES / "fp8-text-encoder-without-fp8.json"))
    run = comfyui_server.run(prompt)
    assert run["status"]["status_str"] == "error"
    error = error_of(run)
    assert error["node_id"] == "2" and "fp8_text_encoder = True" in error["exception_message"]
    log = comfyui_server.log_path.read_text()
    line = next(li for li in log.splitlines() if "fp8_text_encoder = True" in li)
    assert "!!! Exception during processing !!!" in line
    after = log[log.index(line):].splitlines()[1:4]
    assert not any(li.startswith("Traceback") for li in after), after


@on_every_version
def test_an_incompatible_pair_fails_at_its_node_with_both_names(comfyui_server):
    run = comfyui_server.run(json.loads((FIXTURES / "teacache-on-wan-api.json").read_text()))
    assert run["status"]["status_str"] == "error"
    error = error_of(run)
    assert error["node_id"] == "2"
    assert error["exception_message"].startswith("Apply TeaCache cannot be combined with Wan2.2-T2V")


# ---- progress, interrupt, free ---------------------------------------------------------------------
def _run_with_events(server, prompt: dict, client_id: str) -> tuple[dict, list[dict]]:
    """(the /history entry, Sample's progress messages) of one queued prompt."""
    sample = node_id(prompt, "OmniSampleV2")
    events = Events(server, client_id)
    try:
        prompt_id = queue_with(server, prompt, events.client_id)
        run = server.wait(prompt_id)
        events.wait_for(lambda: events.of("execution_success", prompt_id) or events.of("execution_error", prompt_id))
    finally:
        events.close()
    assert run["status"]["status_str"] == "success", error_of(run)
    return run, [d for _, d in events.of("progress", prompt_id) if d["node"] == sample]


@on_every_version
def test_progress_reaches_the_websocket_and_a_quality_target_is_kept_in_the_user_folder(comfyui_server):
    """The TeaCache workflow asks for 35 dB: its first run calibrates (one progress bar over all its runs),
    keeps the threshold in ComfyUI's user folder, and a later run of another seed reuses it."""
    kept = comfyui_server.base / "user" / "omni_diffusion" / "cache-calibrations.json"
    kept.unlink(missing_ok=True)
    prompt = small("qwen-image-teacache.json", steps=8, seed=101)
    sample = node_id(prompt, "OmniSampleV2")
    run, progress = _run_with_events(comfyui_server, prompt, "omni-progress")
    steps = [d["value"] for d in progress]
    total = progress[-1]["max"]
    assert total > 8 and steps[-1] == total and steps == sorted(steps), steps
    assert all(d["max"] == total for d in progress), "one bar over the calibration and the run"
    text = run["outputs"][sample]["text"][0]
    assert "TeaCache" in text and "for at least 35 dB" in text and "calibrated in" in text, text
    assert kept.exists()

    prompt[sample]["inputs"]["seed"] += 1000
    run, progress = _run_with_events(comfyui_server, prompt, "omni-progress-again")
    text = run["outputs"][sample]["text"][0]
    assert "reused" in text and progress[-1]["value"] == progress[-1]["max"] == 8, text


def _interrupt_midway(server, prompt: dict, client_id: str, after_step: int = 2):
    """Queue `prompt`, POST /interrupt once Sample has reported `after_step`; (steps reported after the
    interrupt, seconds from the interrupt to execution_interrupted, the history entry)."""
    sample = node_id(prompt, "OmniSampleV2")
    events = Events(server, client_id)
    try:
        prompt_id = queue_with(server, prompt, client_id)
        events.wait_for(lambda: any(d["node"] == sample and d["value"] >= after_step
                                    for _, d in events.of("progress", prompt_id)))
        asked = time.monotonic()
        server.post("/interrupt", {})
        events.wait_for(lambda: events.of("execution_interrupted", prompt_id) or events.of("execution_error", prompt_id))
        entry = server.wait(prompt_id)
    finally:
        events.close()
    stopped_at = events.of("execution_interrupted", prompt_id)
    assert stopped_at, f"the run was not interrupted: {events.of('execution_error', prompt_id)}"
    later = [d["value"] for at, d in events.of("progress", prompt_id) if d["node"] == sample and at > asked]
    return later, stopped_at[0][0] - asked, entry


def _image_of(server, prompt: dict) -> np.ndarray:
    run = server.run(prompt)
    assert run["status"]["status_str"] == "success", (error_of(run), server.log_tail())
    (file,) = server.output_files(run)
    return pixels(file)


@pytest.mark.parametrize("workflow", ["qwen-image.json", "qwen-image-ulysses2.json"], ids=["1-process", "2-ranks"])
@on_newest
def test_interrupt_stops_a_long_sample_and_the_next_run_is_clean(comfyui_server, workflow):
    """/interrupt during a 1000-step Sample: it stops at the next step boundary (every rank at the same
    step), and the next run gives the image a run before the interrupt gave."""
    clear_execution_cache(comfyui_server)
    short = small(workflow)
    before = _image_of(comfyui_server, short)
    later, seconds, entry = _interrupt_midway(comfyui_server, small(workflow, steps=1000), f"omni-int-{workflow}")
    assert entry["status"]["status_str"] == "error" and not entry.get("outputs", {}).get(node_id(short, "SaveImage"))
    assert len(later) <= 1, f"{len(later)} more steps ran after /interrupt ({seconds:.2f} s)"
    clear_execution_cache(comfyui_server)
    after = _image_of(comfyui_server, short)
    assert np.array_equal(before, after), "the run after the interrupt differs from the clean one"


def _worker_processes(server) -> list[int]:
    """The server's child processes: its worker ranks (each in a session of its own, so children are
    how to find them)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                state, parent = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if int(parent) == server.process.pid and state != "Z":
                found.append(int(entry))
    return found


@on_newest
def test_free_ends_every_worker_process(comfyui_server):
    run = comfyui_server.run(small("qwen-image-ulysses2.json", seed=7))
    assert run["status"]["status_str"] == "success", error_of(run)
    workers = _worker_processes(comfyui_server)
    assert len(workers) >= 2, "a 2-rank run left no worker processes to end"
    comfyui_server.post("/free", {"unload_models": True, "free_memory": True})
    deadline = time.monotonic() + 60
    while _worker_processes(comfyui_server) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _worker_processes(comfyui_server) == [], "worker processes outlived /free"


# ---- this pack's outputs into core nodes --------------------------------------------------------
def _add(prompt: dict, class_type: str, **inputs) -> str:
    new_id = str(max(int(i) for i in prompt) + 1)
    prompt[new_id] = {"class_type": class_type, "inputs": inputs}
    return new_id


@on_every_version
def test_our_latent_image_and_mask_go_into_core_nodes(comfyui_server):
    """LATENT into core Save Latent; IMAGE through core Invert Image into Save Image; the layered
    decode's MASK through core Convert Mask to Image into Save Image."""
    prompt = small("qwen-image-layered.json")
    sample, decode = node_id(prompt, "OmniSampleV2"), node_id(prompt, "OmniVAEDecodeLayers")
    _add(prompt, "SaveLatent", samples=[sample, 0], filename_prefix="latents/omni")
    invert = _add(prompt, "ImageInvert", image=[decode, 0])
    inverted_save = _add(prompt, "SaveImage", images=[invert, 0], filename_prefix="omni-inverted")
    mask_image = _add(prompt, "MaskToImage", mask=[decode, 1])
    mask_save = _add(prompt, "SaveImage", images=[mask_image, 0], filename_prefix="omni-mask")
    run = comfyui_server.run(prompt)
    assert run["status"]["status_str"] == "success", (error_of(run), comfyui_server.log_tail())
    latent_files = list((comfyui_server.base / "output" / "latents").glob("omni*.latent"))
    assert latent_files and latent_files[-1].stat().st_size > 0
    import safetensors.torch

    saved = safetensors.torch.load_file(str(latent_files[-1]))["latent_tensor"]
    assert saved.ndim == 5 and saved.shape[1] == 16  # [B, 16, layers + 1, H/8, W/8], core's layered latent
    for save in (inverted_save, mask_save):
        images = run["outputs"][save]["images"]
        assert images and all((comfyui_server.base / "output" / i["subfolder"] / i["filename"]).stat().st_size
                              for i in images)


@on_every_version
def test_our_audio_goes_into_core_audio_nodes(comfyui_server):
    """AUDIO through core Audio Adjust Volume (it reads our waveform and sample rate) into Save Audio."""
    prompt = small("stable-audio.json")
    decode, save = node_id(prompt, "OmniVAEDecodeAudio"), node_id(prompt, "SaveAudio")
    louder = _add(prompt, "AudioAdjustVolume", audio=[decode, 0], volume=-6)
    prompt[save]["inputs"].update(audio=[louder, 0], filename_prefix="audio/omni-core")
    run = comfyui_server.run(prompt)
    assert run["status"]["status_str"] == "success", (error_of(run), comfyui_server.log_tail())
    (file,) = comfyui_server.output_files(run)
    assert file.suffix == ".flac" and file.stat().st_size > 0


# ---- core text encoding into Sample ---------------------------------------------------------------
ENCODER_MODEL = "qwen-image-comfy-encoder"  # a tiny Qwen-Image whose DiT reads the tiny encoder's width
ENCODER_FILE = "qwen_2.5_vl_tiny.safetensors"


@pytest.fixture(scope="session")
def comfy_encoder_model(models_dir, comfyui_code):
    """A tiny Qwen-Image folder whose text encoder core Load CLIP can build (with the test pack
    tiny_qwen_text_encoder: 512 wide, the real vocabulary, ComfyUI's own Qwen2.5 tokenizer), and that
    encoder's weights as a ComfyUI text_encoders/ file."""
    import torch
    from diffusers import QwenImageTransformer2DModel
    from safetensors.torch import save_file
    from test_comfyui_text_encode import comfy_layout, tiny_qwen25_vl_text_encoder
    from transformers import Qwen2Tokenizer

    from omni_backend.families import FAMILIES

    folder = models_dir / "diffusers" / ENCODER_MODEL
    if not folder.exists():
        torch.manual_seed(0)
        pipe = FAMILIES["qwen-image"].build_tiny()
        pipe.transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=512, axes_dims_rope=(8, 4, 4)).eval()
        pipe.text_encoder = tiny_qwen25_vl_text_encoder()
        pipe.tokenizer = Qwen2Tokenizer.from_pretrained(comfyui_code.path / "comfy" / "text_encoders" / "qwen25_tokenizer")
        pipe.save_pretrained(folder, safe_serialization=True)
        (models_dir / "text_encoders").mkdir(exist_ok=True)
        save_file(comfy_layout(pipe.text_encoder), models_dir / "text_encoders" / ENCODER_FILE)
    return ENCODER_MODEL


def _with_core_text_encode(prompt: dict, positive: str, negative: str) -> dict:
    """Sample's prompts from core Load CLIP -> CLIP Text Encode instead of its text fields."""
    prompt = json.loads(json.dumps(prompt))
    sample = node_id(prompt, "OmniSampleV2")
    clip = _add(prompt, "CLIPLoader", clip_name=ENCODER_FILE, type="qwen_image")
    pos = _add(prompt, "CLIPTextEncode", clip=[clip, 0], text=positive)
    neg = _add(prompt, "CLIPTextEncode", clip=[clip, 0], text=negative)
    prompt[sample]["inputs"].update(positive=[pos, 0], negative=[neg, 0], prompt="(not used)")
    return prompt


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) / 255.0).__pow__(2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@on_every_version
def test_core_clip_text_encode_conditioning_drives_sample(comfyui_server, comfy_encoder_model):
    """Core Load CLIP + CLIP Text Encode give Sample the prompt: the image is the one Sample makes from
    the same text with the pipeline's own encoder (ComfyUI encodes in fp16 on the CPU, so near, not
    equal), and far from the image of another prompt."""
    text, other, negative = "a red circle on a blue background", "a green square on a white floor", " "
    prompt = small("qwen-image.json", steps=4, negative_prompt=negative)
    prompt[node_id(prompt, "OmniLoadModel")]["inputs"]["model_name"] = comfy_encoder_model
    clear_execution_cache(comfyui_server)
    through_comfy = _image_of(comfyui_server, _with_core_text_encode(prompt, text, negative))
    node = prompt[node_id(prompt, "OmniSampleV2")]
    node["inputs"]["prompt"] = text
    typed = _image_of(comfyui_server, prompt)
    node["inputs"]["prompt"] = other
    another = _image_of(comfyui_server, prompt)
    near, far = psnr(through_comfy, typed), psnr(through_comfy, another)
    print(f"CONDITIONING vs typed prompt: {near:.1f} dB; vs another prompt: {far:.1f} dB")
    assert near > far + 20, (near, far)  # seen: identical (inf dB) against 53 dB
