"""A real ComfyUI server with this pack: the rules route, the extension's files, refusals at queue
time and at run time, and Sample's report in the run's outputs.

Needs COMFYUI_PATH (a ComfyUI checkout) and COMFYUI_PYTHON (an interpreter with ComfyUI's and this
pack's requirements; default: this one). CI has no ComfyUI (it is on no package registry), so
without COMFYUI_PATH every test here is skipped. The server gets its own base directory: this
checkout as its only custom node pack and the tiny models as its models.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from omni_diffusion_nodes.headless.runner import to_prompt
from omni_diffusion_nodes.headless.workflow_format import load_workflow

COMFYUI = os.environ.get("COMFYUI_PATH")
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
PACK_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = PACK_ROOT / "tests" / "workflow_fixtures"
STARTUP_SECONDS = 300  # importing torch and ComfyUI on two shared cores
RUN_SECONDS = 300

pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set (a ComfyUI checkout to start)")


def request(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "omni-diffusion-nodes").symlink_to(PACK_ROOT, target_is_directory=True)
    (base / "models").mkdir()
    for kind in ("diffusers", "loras"):
        (base / "models" / kind).symlink_to(models_dir / kind, target_is_directory=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(base / "comfyui.log", "w")
    process = subprocess.Popen([PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                "--base-directory", str(base), "--disable-auto-launch"],
                               cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited: {(base / 'comfyui.log').read_text()[-3000:]}")
            try:
                if request(f"{url}/object_info/OmniLoadModel")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not start: {(base / 'comfyui.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def queue(url: str, prompt: dict):
    return request(f"{url}/prompt", {"prompt": prompt, "client_id": "omni-tests"})


def finished(url: str, prompt_id: str) -> dict:
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        history = json.loads(request(f"{url}/history/{prompt_id}")[1])
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            if history[prompt_id]["status"]["status_str"] in ("success", "error"):
                return history[prompt_id]
        time.sleep(1)
    pytest.fail(f"prompt {prompt_id} did not finish in {RUN_SECONDS} s")


def test_the_check_route_answers_for_the_graph_posted(server):
    workflow = load_workflow(FIXTURES / "teacache-on-sd3.json")
    for prefix in ("", "/api"):  # ComfyUI mounts custom routes under /api too (the frontend uses that)
        status, body = request(f"{server}{prefix}/omni_diffusion/check", workflow)
        assert status == 200
        answer = json.loads(body)
        assert [p["rule"] for p in answer["problems"]["2"]] == ["teacache.family"]
        assert answer["support"]["1"][0].startswith("Stable-Diffusion-3.5")


def test_the_extension_files_are_served(server):
    extensions = json.loads(request(f"{server}/extensions")[1])
    for name in ("omni_extension.js", "graph_request.js"):
        path = next(e for e in extensions if e.endswith(f"/omni-diffusion-nodes/{name}"))
        status, body = request(f"{server}{path}")
        assert status == 200 and (b"export function" in body or b"registerExtension" in body)
    assert not any(e.endswith(".mjs") for e in extensions), "the node tests are not loaded as extensions"


def test_a_fault_of_two_inputs_of_one_node_fails_at_that_node_naming_it(server):
    """fp8_text_encoder without an fp8 mode: no VALIDATE_INPUTS (ComfyUI would repeat its verdict once
    per input named), so the node fails when it runs, with the input, value and fix."""
    prompt = to_prompt(load_workflow(FIXTURES / "fp8-text-encoder-without-fp8.json"))
    status, body = queue(server, prompt)
    assert status == 200, body
    run = finished(server, json.loads(body)["prompt_id"])
    assert run["status"]["status_str"] == "error"
    error = next(detail for kind, detail in run["status"]["messages"] if kind == "execution_error")
    assert error["node_id"] == "2" and "fp8_text_encoder = True" in error["exception_message"]


def test_an_incompatible_pair_fails_at_its_node_with_both_names(server):
    status, body = queue(server, json.loads((FIXTURES / "teacache-on-wan-api.json").read_text()))
    assert status == 200, body
    run = finished(server, json.loads(body)["prompt_id"])
    assert run["status"]["status_str"] == "error"
    error = next(detail for kind, detail in run["status"]["messages"] if kind == "execution_error")
    assert error["node_id"] == "2"
    assert error["exception_message"].startswith("Apply TeaCache cannot be combined with Wan2.2-T2V")


def test_sample_reports_what_ran(server):
    prompt = to_prompt(load_workflow(PACK_ROOT / "workflows" / "qwen-image-teacache.json"))
    sample_id = next(i for i, n in prompt.items() if n["class_type"] == "OmniSample")
    prompt[sample_id]["inputs"].update(steps=4, width=64, height=64)
    status, body = queue(server, prompt)
    assert status == 200, body
    run = finished(server, json.loads(body)["prompt_id"])
    assert run["status"]["status_str"] == "success", run["status"]
    assert "TeaCache" in run["outputs"][sample_id]["text"][0]
