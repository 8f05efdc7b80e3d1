"""The real ComfyUI, for the test tier that runs the pack where users run it (pytest marker `comfyui`).

COMFYUI_PATH names a ComfyUI source tree, or a folder holding several (one per version, each with its
main.py); without it, every test of the tier is skipped with that reason. COMFYUI_PYTHON is the
interpreter that runs them (ComfyUI's requirements and this pack's; default: this one). A version
whose frontend differs from the interpreter's may have its own packages in COMFYUI_OVERLAYS/<version>
(`pip install --target`, put before the interpreter's on PYTHONPATH): `.ci/run` puts 0.3.64's pinned
frontend there. COMFYUI_ENV_READY, when set, names a file that appears holding an exit status once
those interpreters are built: `.ci/run` builds them while the rest of the suite runs (the tier runs
last), and the tier waits for that file before it starts anything.

A tree is never run where it lies: each is copied once per session to a temporary folder (ComfyUI
writes its database and caches beside its code), and each server gets its own base directory with
this checkout linked into custom_nodes/ and the tiny stand-ins as its models.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parent.parent
TINY_ENCODER_PACK = PACK_ROOT / "tests" / "comfyui_scripts" / "tiny_qwen_text_encoder"
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
OVERLAYS = os.environ.get("COMFYUI_OVERLAYS")
SKIP_REASON = "COMFYUI_PATH is not set (a ComfyUI source tree, or a folder of them, to run the real host)"
STARTUP_SECONDS = 300  # importing torch, ComfyUI and the pack on two shared cores
RUN_SECONDS = 600
ENV_READY = os.environ.get("COMFYUI_ENV_READY")
ENV_BUILD_SECONDS = 1800  # the longest the tier waits for a build that .ci/run started beside pytest

# The tier's marks: `pytest -m comfyui` selects it, `-m "not comfyui"` leaves it out.
tier = [pytest.mark.comfyui, pytest.mark.skipif(not COMFYUI_PATH, reason=SKIP_REASON)]


def real_comfyui(test):
    """Mark one test as the tier's (a module can instead set `pytestmark = tier`)."""
    for mark in tier:
        test = mark(test)
    return test


@dataclass(frozen=True)
class Tree:
    version: str
    source: Path

    @property
    def overlay(self) -> Path | None:
        path = Path(OVERLAYS) / self.version if OVERLAYS else None
        return path if path and path.is_dir() else None


def _version_of(tree: Path) -> str:
    text = (tree / "comfyui_version.py").read_text() if (tree / "comfyui_version.py").exists() else ""
    found = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    return found.group(1) if found else tree.name


def _version_key(version: str):
    return tuple(int(part) if part.isdigit() else 0 for part in re.split(r"[.+-]", version))


def trees() -> list[Tree]:
    """The ComfyUI trees COMFYUI_PATH names, oldest first."""
    if not COMFYUI_PATH:
        return []
    root = Path(COMFYUI_PATH)
    found = [root] if (root / "main.py").exists() else [p for p in root.iterdir() if (p / "main.py").exists()]
    if not found:
        raise RuntimeError(f"COMFYUI_PATH = {COMFYUI_PATH}: no ComfyUI main.py there or in its subfolders")
    return sorted((Tree(_version_of(p), p) for p in found), key=lambda t: _version_key(t.version))


def newest() -> Tree | None:
    found = trees()
    return found[-1] if found else None


def working_copy(tree: Tree, scratch: Path) -> Path:
    """The tree copied into `scratch` once (its __pycache__ and database go there, not into the source)."""
    target = scratch / f"ComfyUI-{tree.version}"
    if not target.exists():
        shutil.copytree(tree.source, target, symlinks=True,
                        ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"))
    return target


def wait_for_environment(status_file: str | None = ENV_READY, timeout: float = ENV_BUILD_SECONDS) -> None:
    """Return once the tier's interpreters are built: at once without COMFYUI_ENV_READY; otherwise when
    its status file appears, failing the test with the build's log when the build failed."""
    if not status_file:
        return
    status, deadline = Path(status_file), time.monotonic() + timeout
    while not status.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the real-ComfyUI tier's environment was not built in {timeout:.0f} s "
                        f"(COMFYUI_ENV_READY = {status_file} never appeared)")
        time.sleep(2)
    code = status.read_text().strip()
    if code != "0":
        log = status.with_suffix(".log")
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
        pytest.fail(f"building the real-ComfyUI tier's environment failed (exit status {code}):\n{tail}")


def environment(tree: Tree, code_dir: Path, **extra) -> dict:
    """The environment ComfyUI runs in: its tree (and the version's overlay) first on the import path."""
    paths = [str(code_dir)] + ([str(tree.overlay)] if tree.overlay else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@dataclass(frozen=True)
class ComfyCode:
    """A working copy of one ComfyUI tree, to run scripts that import ComfyUI's modules."""

    tree: Tree
    path: Path

    def run(self, script: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        """Run `script` in ComfyUI's interpreter with its modules importable (`comfy`, `nodes`, ...)."""
        wait_for_environment()
        return subprocess.run([PYTHON, str(script), *args], cwd=self.path, capture_output=True, text=True,
                              timeout=timeout, env=environment(self.tree, self.path))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, body=None, timeout: float = 30):
    """(status, bytes) of a GET, or of a POST of `body` as JSON."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _end_with_parent() -> None:
    """In the server's process, before ComfyUI starts: Linux sends it SIGTERM if pytest dies first (a
    killed test run must not leave servers listening)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ComfyServer:
    """One real ComfyUI server (main.py --cpu on loopback) with this pack as its only custom node pack."""

    tree: Tree
    code_dir: Path
    base: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "comfyui.log"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self) -> "ComfyServer":
        wait_for_environment()
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base), "--disable-auto-launch",
             "--database-url", f"sqlite:///{self.base / 'comfyui.db'}"],
            cwd=self.code_dir, stdout=self._log, stderr=subprocess.STDOUT, env=environment(self.tree, self.code_dir),
            start_new_session=True, preexec_fn=_end_with_parent)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI {self.tree.version} exited:\n{self.log_tail()}")
            try:
                if self.get("/object_info/OmniLoadModel")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ComfyUI {self.tree.version} did not start in {STARTUP_SECONDS} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(1)
        # A first visit would open the template browser over the graph; a user who has used ComfyUI
        # before sees none, and neither should the browser tests.
        self.post("/settings/Comfy.TutorialCompleted", True)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    # ---- the HTTP API ---------------------------------------------------------------------------
    def get(self, path: str):
        return http(self.url + path)

    def post(self, path: str, body):
        return http(self.url + path, body)

    def get_json(self, path: str):
        status, body = self.get(path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def queue(self, prompt: dict, client_id: str = "omni-tests") -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
        assert status == 200, body.decode(errors="replace")
        return json.loads(body)["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = RUN_SECONDS) -> dict:
        """The prompt's /history entry once it ended (success, error or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during prompt {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not end in {timeout} s:\n{self.log_tail()}")

    def run(self, prompt: dict) -> dict:
        return self.wait(self.queue(prompt))

    def output_files(self, entry: dict) -> list[Path]:
        """The files a run's output nodes report (images, animated images, audio), under the base's output/."""
        files = []
        for node_output in entry.get("outputs", {}).values():
            for kind in ("images", "gifs", "audio", "video"):
                for item in node_output.get(kind, []) or []:
                    if isinstance(item, dict) and item.get("type") == "output":
                        files.append(self.base / "output" / item.get("subfolder", "") / item["filename"])
        return files


def error_of(entry: dict) -> dict | None:
    """The execution_error message of a /history entry, if the run failed."""
    return next((detail for kind, detail in entry["status"].get("messages", []) if kind == "execution_error"), None)


def make_base(base: Path, models_dir: Path, input_image: Path) -> Path:
    """A ComfyUI base directory: this pack in custom_nodes/, the stand-in models, the example input."""
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "omni-diffusion-nodes").symlink_to(PACK_ROOT, target_is_directory=True)
    # Test-only, no nodes: lets core Load CLIP build the tiny Qwen-Image text encoder (see its docstring).
    (base / "custom_nodes" / "tiny_qwen_text_encoder").symlink_to(TINY_ENCODER_PACK, target_is_directory=True)
    (base / "models").mkdir()
    for kind in models_dir.iterdir():
        (base / "models" / kind.name).symlink_to(kind, target_is_directory=True)
    (base / "input").mkdir()
    shutil.copy(input_image, base / "input" / input_image.name)
    return base


def _version_params(found: list[Tree]):
    return [pytest.param(tree, id=tree.version) for tree in found] or [pytest.param(None, id="no-comfyui")]


# For tests that take the `comfyui_server` fixture (tests/conftest.py): one server per version, shared
# by every test module of the session (pytest groups the tests by version and ends each server once its
# tests have run).
on_every_version = pytest.mark.parametrize("comfyui_server", _version_params(trees()), indirect=True)
on_newest = pytest.mark.parametrize("comfyui_server", _version_params(trees()[-1:]), indirect=True)


def only_cases(keep):
    """Run only the parameter combinations for which keep(**params) is true; the rest are deselected
    (tests/conftest.py), not skipped: a cross product of versions and workflows, say, where older
    versions run a subset. (Pairing the parameters in one parametrize call instead would make pytest
    start the session's server anew for every test.)"""
    return pytest.mark.only_cases(keep)


# ---- which shipped workflows run where -------------------------------------------------------------
def node_types(path: Path) -> set[str]:
    return {node["type"] for node in json.loads(path.read_text())["nodes"]}


def output_kind(path: Path) -> str:
    types = node_types(path)
    return ("audio" if "SaveAudio" in types else "layered" if "JoinImageWithAlpha" in types
            else "video" if "SaveAnimatedPNG" in types else "image")


# The single-file workflow every subset runs: ComfyUI's most used file format (FP8 weights, the text
# encoder's tokenizer from ComfyUI's own tree). The others load through the same node and host code, and
# test_single_file*.py load every family's files headlessly; the newest ComfyUI runs them all.
SUBSET_SINGLE_FILES = "qwen-image-comfy-files.json"


def tier_traits(path: Path) -> set[str]:
    """What an older ComfyUI must see run: every output kind (core's save nodes of that version) and a
    layout of several processes (started from its server). Its editor loads every workflow, which shows
    every node type's widgets; the nodes run the same code on every version."""
    return {output_kind(path)} | ({"several processes"} if ranks(path) > 1 else set())


def host_traits(path: Path) -> set[str]:
    """What the headless host adds to the nodes it runs: its core-node stand-ins, and every output kind."""
    return {t for t in node_types(path) if not t.startswith("Omni")} | {output_kind(path)}


def ranks(path: Path) -> int:
    """How many processes the workflow's Parallel Config starts (its first four widgets: the degrees)."""
    for node in json.loads(path.read_text())["nodes"]:
        if node["type"] == "OmniParallelConfig":
            return math.prod(int(value) for value in node["widgets_values"][:4])
    return 1


def covering_subset(paths: list[Path], traits=tier_traits, first: tuple[str, ...] = (SUBSET_SINGLE_FILES,)
                    ) -> list[Path]:
    """The fewest workflows that hold every trait: the `first` ones, then greedily the one with the most
    new coverage for its work (work()), shorter names breaking ties."""
    chosen = [p for p in paths if p.name in first]
    covered = set().union(*map(traits, chosen))
    wanted = set().union(*map(traits, paths))
    while covered != wanted:
        best = max((p for p in paths if p not in chosen),
                   key=lambda p: (len(traits(p) - covered) / work(p), -len(p.name), p.name))
        chosen.append(best)
        covered |= traits(best)
    return sorted(chosen)


def work(path: Path) -> float:
    """About how long the workflow runs on the tiny stand-ins, relative to the others: its processes times
    a process's start (worth about 10 of the rest) and its Sample's steps x megapixels x frames (x 2 for
    true CFG: two branches a step)."""
    total = 0.0
    nodes = json.loads(path.read_text())["nodes"]
    video = [node["widgets_values"][0] for node in nodes if node["type"] == "OmniVideoOptions"]
    for node in nodes:
        if node["type"] in ("OmniSampleV2", "OmniSample"):  # the old Sample held frames after height
            # widgets: prompt, negative_prompt, seed, control_after_generate, steps, guidance, width, height
            steps, guidance, width, height = node["widgets_values"][4:8]
            frames = node["widgets_values"][8] if node["type"] == "OmniSample" else (video or [1])[0]
            total += steps * width * height * frames * (2 if guidance > 1 else 1) / 1e6
    return ranks(path) * (10 + total)


# The suites run each shipped workflow with its Sample's steps cut to this many and its size to at most
# QUICK_SIDE px a side (aspect kept, multiples of 32): a step of a tiny model repeats the one before it
# (same nodes, same hooks), and the files ask for what users run (20 to 50 steps at 768 to 1024 px), most
# of a run's time here. 8 is the least a quality target calibrates at (omni_backend/cache/calibration.py
# MIN_STEPS) and leaves a cache's warm-up and skips in the run; 512 px stays below the decode's tiling
# threshold (1024 px) like the files' own sizes.
QUICK_STEPS = 8
QUICK_SIDE = 512


def with_quick_steps(path: Path) -> dict:
    """The workflow of `path` with its Samples' steps and size cut as above (the old Sample's too)."""
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:
        if node["type"] in ("OmniSampleV2", "OmniSample"):  # widgets: prompt, negative, seed, control, steps,
            values = node["widgets_values"]                  # guidance, width, height
            values[4] = min(values[4], QUICK_STEPS)
            scale = min(1.0, QUICK_SIDE / max(values[6], values[7]))
            values[6], values[7] = (max(32, int(side * scale) // 32 * 32) if scale < 1 else side
                                    for side in values[6:8])
    return workflow
