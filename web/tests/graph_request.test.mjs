// node --test web/tests/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { noteLines, packSignature } from "../graph_request.js";

const workflow = JSON.parse(readFileSync(new URL("../../workflows/qwen-image-teacache.json", import.meta.url)));
const clone = () => structuredClone(workflow);

test("the signature follows the pack's nodes and links, not positions or other packs", () => {
  const base = packSignature(workflow);
  const moved = clone();
  moved.nodes[0].pos = [999, 999];
  assert.equal(packSignature(moved), base, "moving a node changes nothing the check reads");

  const foreign = clone();
  foreign.nodes.push({ id: 900, type: "OtherPack_Node", widgets_values: [1], inputs: [] });
  assert.equal(packSignature(foreign), base, "another pack's node is ComfyUI's to check");

  const edited = clone();
  const teacache = edited.nodes.find((n) => n.type === "OmniApplyTeaCache");
  teacache.widgets_values[0] = 0.9;
  assert.notEqual(packSignature(edited), base, "a widget of ours changes the answer");

  const bypassed = clone();
  bypassed.nodes.find((n) => n.type === "OmniApplyTeaCache").mode = 4;
  assert.notEqual(packSignature(bypassed), base, "bypassing a node changes the answer");

  const unlinked = clone();
  const sample = unlinked.nodes.find((n) => n.type === "OmniSampleV2");
  const cut = sample.inputs.find((slot) => slot.name === "model").link;
  sample.inputs.find((slot) => slot.name === "model").link = null;
  unlinked.links = unlinked.links.filter((link) => link[0] !== cut);
  assert.notEqual(packSignature(unlinked), base, "a link between our nodes changes the answer");

  const saved = clone();
  saved.links = saved.links.filter((link) => link[5] !== "IMAGE");
  assert.equal(packSignature(saved), base, "a link to another node (Save Image) is not ours to check");
});

test("notes show problems with their fixes first, else what the model supports", () => {
  const answer = {
    problems: { 2: [{ node: "2", problem: "Apply TeaCache cannot be combined with X: no", fix: "use Y", rule: "r" }] },
    support: { 1: ["Qwen-Image: TeaCache, LoRA"] },
  };
  assert.deepEqual(noteLines(answer, 2), { kind: "problem", lines: ["⚠ Apply TeaCache cannot be combined with X: no. Fix: use Y"] });
  assert.deepEqual(noteLines(answer, "1"), { kind: "support", lines: ["Qwen-Image: TeaCache, LoRA"] });
  assert.equal(noteLines(answer, 3), null);
  assert.equal(noteLines(null, 1), null);
});
