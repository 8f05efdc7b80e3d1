"""Every shipped workflow in a real ComfyUI server and its real web frontend (the `comfyui` tier).

For each ComfyUI tree COMFYUI_PATH names (see tests/comfyui_host.py), one server runs with this pack
linked into its custom_nodes/ and tiny stand-ins under the exact names the workflows use. Debian's
chromium, driven by Playwright, opens the editor, loads each workflow file as a user would (drag and
drop ends in the same `app.loadGraphData`), fails on the frontend's schema alert or missing-nodes
dialog, and queues it with the frontend's own graph-to-prompt conversion. The run must succeed and
every file its output nodes report must exist and not be empty.

All shipped workflows run on the newest tree. Older trees load every one in their editor (every node
type's widgets, with no complaint) and run a subset that covers every output kind, a layout of several
processes and the FP8 single-file workflow (`comfyui_host.covering_subset`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_host import (ComfyServer, covering_subset, error_of, newest, on_every_version, only_cases, real_comfyui,
                          with_quick_steps)

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
# Files saved with the old Sample (every option a widget) and the three-output decoder (test_workflows.py).
SAVED_BEFORE = sorted((Path(__file__).resolve().parents[1] / "workflow_fixtures" / "saved-before-option-nodes").glob("*.json"))
CHROMIUM = "/usr/bin/chromium"
# What the machine's closed network needs: no background fetches, no first-run work (see docs/testing.md).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def runs_on(tree, path: Path) -> bool:
    """All workflows on the newest tree, the subset on older ones."""
    return tree is None or tree == newest() or path in covering_subset(WORKFLOWS)


def older(tree) -> bool:
    return tree is not None and tree != newest()


class Editor:
    """The real frontend in chromium: load a workflow file, see what it complains about, queue it."""

    def __init__(self, page, server: ComfyServer):
        self.page = page
        self.server = server
        self.native_dialogs: list[str] = []
        page.on("dialog", self._on_dialog)

    def _on_dialog(self, dialog):
        self.native_dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self):
        self.page.goto(self.server.url, wait_until="domcontentloaded")
        self.page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        self.page.wait_for_function(
            "() => window.LiteGraph.registered_node_types && 'OmniSampleV2' in window.LiteGraph.registered_node_types",
            timeout=60_000)
        self.dismiss_all()

    def dismiss_all(self):
        self.native_dialogs.clear()
        self.page.evaluate("""() => {
            for (const b of document.querySelectorAll('.p-dialog .p-dialog-header-close, .p-toast-icon-close'))
                b.click();
        }""")
        self.page.wait_for_timeout(300)

    def complaints(self) -> list[str]:
        """What the frontend shows after a load: native alerts, dialogs, warning or error toasts."""
        shown = self.page.evaluate("""() => {
            const visible = e => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length);
            const texts = [];
            for (const d of document.querySelectorAll('.p-dialog')) if (visible(d)) texts.push('dialog: ' + d.innerText);
            for (const t of document.querySelectorAll(
                    '.p-toast-message-warn, .p-toast-message-error, .p-toast-message-warning'))
                if (visible(t)) texts.push('toast: ' + t.innerText);
            return texts;
        }""")
        return [f"alert: {m}" for m in self.native_dialogs] + shown

    def load(self, workflow: dict) -> list[str]:
        self.dismiss_all()
        self.page.evaluate("async (w) => { await window.app.loadGraphData(w); }", workflow)
        self.page.wait_for_timeout(700)  # toasts and dialogs open after the graph is configured
        return self.complaints()

    def queue(self) -> dict:
        """Queue the loaded graph as the Queue button does; the /prompt answer."""
        with self.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                                       timeout=60_000) as answer:
            self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        return answer.value.json()


@pytest.fixture(scope="module")
def editor(comfyui_server):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            opened = Editor(page, comfyui_server)
            opened.open()
            yield opened
        finally:
            browser.close()


@real_comfyui
@only_cases(lambda comfyui_server, path: runs_on(comfyui_server, path))
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
@on_every_version
def test_shipped_workflow_runs_in_the_real_editor(comfyui_server, editor, path):
    server = comfyui_server
    workflow = with_quick_steps(path)
    complaints = editor.load(workflow)
    assert complaints == [], f"the editor complained about {path.name}: {complaints}"
    answer = editor.queue()
    assert answer.get("prompt_id") and not answer.get("node_errors"), answer
    entry = server.wait(answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", (error_of(entry), server.log_tail())
    files = server.output_files(entry)
    saves = [n for n in workflow["nodes"] if n["type"].startswith("Save")]
    assert len(files) >= len(saves), f"{path.name}: {len(saves)} save nodes reported {files}"
    for file in files:
        assert file.is_file() and file.stat().st_size > 0, f"{file} is missing or empty"


@real_comfyui
@only_cases(lambda comfyui_server: older(comfyui_server))
@on_every_version
def test_an_older_editor_loads_every_shipped_workflow_without_a_complaint(comfyui_server, editor):
    """Where not every workflow runs: each loads as a user's file would, so every node type's widgets and
    links are what that frontend accepts (the newest one loads each in the test above)."""
    complained = {path.name: complaints for path in WORKFLOWS
                  if (complaints := editor.load(json.loads(path.read_text())))}
    assert complained == {}


@real_comfyui
@on_every_version
def test_workflows_saved_before_the_option_nodes_load_and_run_in_the_real_editor(comfyui_server, editor):
    """The old Sample and decoder stay registered (hidden from the search): saved files load without a
    complaint, and the layered one (the old Sample's mask and layers widgets, the decoder's masks slot) runs
    and writes one RGBA layer per layer asked for."""
    complained = {path.name: complaints for path in SAVED_BEFORE
                  if (complaints := editor.load(json.loads(path.read_text())))}
    assert complained == {}
    workflow = with_quick_steps(SAVED_BEFORE[0])
    sample = next(n for n in workflow["nodes"] if n["type"] == "OmniSample")
    assert editor.load(workflow) == []
    answer = editor.queue()
    assert answer.get("prompt_id") and not answer.get("node_errors"), answer
    entry = comfyui_server.wait(answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", (error_of(entry), comfyui_server.log_tail())
    assert len(comfyui_server.output_files(entry)) == sample["widgets_values"][-2]  # (layers, resolution) end it


@real_comfyui
@on_every_version
def test_the_editor_shows_a_bad_file_and_a_missing_node(comfyui_server, editor):
    """The control for the test above: the same look finds the frontend's complaints when there are some."""
    broken = json.loads(WORKFLOWS[0].read_text())
    broken["nodes"][0]["type"] = "NoSuchNodeFromAnotherPack"
    assert any("NoSuchNodeFromAnotherPack" in text for text in editor.load(broken)), editor.complaints()
    invalid = json.loads(WORKFLOWS[0].read_text())
    invalid["links"][0][1] = "not a node id"  # a link whose origin is not a node id: against the schema
    assert editor.load(invalid), "the schema alert was not seen"
    editor.dismiss_all()
