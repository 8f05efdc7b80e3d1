"""The README stays short and points into docs/; every link between them leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[2]
README = PACK_ROOT / "README.md"
DOCS = sorted((PACK_ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 300

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), not images
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    return LINK.findall(text)


def test_readme_is_at_most_300_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, (f"README.md has {lines} lines (at most {MAX_README_LINES}): move the "
                                       "reference into docs/ and link to it")


def test_the_slug_is_githubs():
    assert slug("Offload/FP8") == "offloadfp8"
    assert slug("Multi-GPU (Parallel Config)") == "multi-gpu-parallel-config"
    assert slug("ComfyUI's single files") == "comfyuis-single-files"
    assert slug("LATENT and OMNI_MODEL") == "latent-and-omni_model"
    assert slug("Quick start (fresh machine, two commands)") == "quick-start-fresh-machine-two-commands"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(PACK_ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading(page):
    assert links(page), f"{page.name} links nowhere"
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(PACK_ROOT) if PACK_ROOT in dest.parents else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(PACK_ROOT)}")
    assert not broken, f"{page.relative_to(PACK_ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_each_docs_page_opens_with_a_summary_and_the_way_back(page):
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# "), f"{page.name}: start with a title"
    summary = lines[2]
    assert summary and not summary.startswith(("#", "|", "-", "`")), f"{page.name}: a one-line summary under the title"
    assert "](../README.md)" in summary, f"{page.name}: the summary line links back to the README"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    assert not [p.name for p in DOCS if p.resolve() not in linked], "link every docs page from the README"


def test_every_node_has_its_line_in_the_readme_and_its_row_in_docs():
    from omni_diffusion_nodes.nodes import NODE_DISPLAY_NAME_MAPPINGS

    readme = README.read_text()
    nodes_section = readme[readme.index("## Nodes"):].split("\n## ")[0]
    reference = (PACK_ROOT / "docs" / "nodes.md").read_text()
    listed = [line for line in nodes_section.splitlines() if line.startswith("- **")]
    for title in NODE_DISPLAY_NAME_MAPPINGS.values():
        assert any(f"**{title}**" in line for line in listed), f"give {title} its place in the README's Nodes list"
        assert f"| **{title}** |" in reference, f"give {title} its row in docs/nodes.md"


def test_the_readme_keeps_the_test_command_ci_runs():
    """`.ci/run` ends with the README's test command (tests/structure/test_packaging.py checks the pytest line too)."""
    last = [line for line in (PACK_ROOT / ".ci" / "run").read_text().splitlines() if line.strip()][-1]
    assert last in README.read_text().splitlines()


def test_the_example_graph_shows_its_workflow_file():
    """The README draws workflows/qwen-image-teacache.json by hand: its nodes and settings stay the file's."""
    import json

    from omni_diffusion_nodes.nodes import NODE_DISPLAY_NAME_MAPPINGS

    readme = README.read_text()
    section = readme[readme.index("## Example graph"):].split("\n## ")[0]
    name = re.search(r"`(workflows/[\w.-]+\.json)`", section).group(1)
    graph = section[section.index("```\n") + 4:].split("```")[0]
    nodes = {node["type"]: node["widgets_values"] for node in json.loads((PACK_ROOT / name).read_text())["nodes"]}
    titles = {**NODE_DISPLAY_NAME_MAPPINGS, "SaveImage": "Save Image"}
    assert [titles[kind] for kind in nodes] == re.findall(r"^\[([^\]]+)\]", graph, re.M)
    kinds = ("OmniLoadModel", "OmniApplyTeaCache", "OmniSampleV2", "OmniVAEDecodeImages", "SaveImage")
    model, teacache, sample, decode, save = (nodes[kind] for kind in kinds)
    prompt, _negative, seed, _control, steps, guidance, width, height = sample[:8]
    shown = [f"model_name {model[0]}", f"rel_l1_thresh {teacache[0]:g}", f"target_db {teacache[5]:g}",
             f'prompt "{prompt}"', f"seed {seed}", f"{steps} steps", f"guidance {guidance:g}", f"{width} x {height}",
             f"tile_size {decode[0]}, tile_overlap {decode[1]}", f"filename_prefix {save[0]}"]
    assert not [text for text in shown if text not in graph], f"the README's example graph differs from {name}"
    assert f"omni-diffusion run {name}" in section


def test_the_readme_headline_numbers_are_the_benchmarks_page_numbers():
    """The README's Benchmarks table is a short copy of docs/benchmarks.md: a re-measured figure changes both."""
    readme = README.read_text()
    table = readme[readme.index("## Benchmarks"):].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Benchmark")]
    full = (PACK_ROOT / "docs" / "benchmarks.md").read_text()
    figures = {figure for row in rows for figure in re.findall(r"(?<![\w.])\d+\.\d+(?:x| dB| s| ms)?", row)}
    assert figures, "no figures found in the README's Benchmarks table"
    assert not sorted(f for f in figures if f not in full), "update the README's headline numbers from docs/benchmarks.md"
