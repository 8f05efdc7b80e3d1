// node --test web/tests/  (Node 20's built-in runner; no packages)
//
// The shared workflow fixtures (tests/workflow_fixtures, written by its build.py) and the rules
// document of the tiny test models (rules_tiny.json, checked against the backend's export by
// tests/test_rules_agreement.py) drive the checker exactly as the extension does.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { checkGraph, fillTemplate, graphFromWorkflow, modelSupport } from "../graph_check.js";

const FIXTURES = new URL("../../tests/workflow_fixtures/", import.meta.url);
const read = (name) => JSON.parse(readFileSync(new URL(name, FIXTURES), "utf8"));
const RULES = read("rules_tiny.json");
const { expected: EXPECTED } = read("expected.json");

const isUiFormat = (workflow) => Array.isArray(workflow.nodes) && Array.isArray(workflow.links);
const ruleProblems = (found) =>
  Object.entries(found).flatMap(([node, problems]) => problems.map((p) => `${node} ${p.rule}`)).sort();

for (const [name, problems] of Object.entries(EXPECTED)) {
  const workflow = read(name);
  if (!isUiFormat(workflow)) continue; // API prompts are for the CLI; the browser edits UI graphs
  test(`${name}: the checker names the node and rule the Python validator names`, () => {
    const wanted = problems.filter((p) => p.rule).map((p) => `${p.node} ${p.rule}`).sort();
    assert.deepEqual(ruleProblems(checkGraph(graphFromWorkflow(workflow, RULES), RULES)), wanted);
  });
}

// A small graph in the checker's own form.
function chain(modelName, ...features) {
  const nodes = [{ id: 1, type: "OmniLoadModel", widgets: { model_name: modelName } }];
  features.forEach(([type, widgets], index) =>
    nodes.push({ id: index + 2, type, widgets, model: index + 1 }));
  return { nodes };
}

test("messages are the backend's templates filled in", () => {
  const found = checkGraph(chain("sd3", ["OmniApplyTeaCache", {}]), RULES);
  const [problem] = found["2"];
  const rule = RULES.rules.find((r) => r.id === "teacache.family");
  assert.equal(problem.reason, rule.reason.replace("{family}", "Stable-Diffusion-3.5"));
  assert.match(problem.message, /^Apply TeaCache cannot be combined with Stable-Diffusion-3\.5: .*\. Fix: use Apply Cache-DiT/);
  assert.match(problem.fix, /TeaCache supports: Qwen-Image, Z-Image, FLUX\.1-dev, FLUX\.2-klein\)$/);
});

test("fillTemplate refuses a template whose value is missing", () => {
  assert.equal(fillTemplate("{a} and {b}", { a: 1, b: "two" }), "1 and two");
  assert.throws(() => fillTemplate("{a} and {b}", { a: 1 }), /\{b\}/);
});

test("a valid chain has no problems, and the same feature on another family does", () => {
  assert.deepEqual(checkGraph(chain("qwen-image", ["OmniApplyTeaCache", {}]), RULES), {});
  assert.deepEqual(Object.keys(checkGraph(chain("wan2.2", ["OmniApplyTeaCache", {}]), RULES)), ["2"]);
});

test("a problem is charged to the node that introduced it, not to the nodes after it", () => {
  const graph = chain("sd3", ["OmniParallelConfig", { ulysses_degree: 2 }], ["OmniLoadLoRA", {
    lora_name: "qwen-image-style-lora.safetensors", component: "auto" }], ["OmniApplyCacheDiT", {}]);
  assert.deepEqual(ruleProblems(checkGraph(graph, RULES)), ["2 parallel.sequence_plan"]);
});

test("reroutes and bypassed nodes pass the model through; muted nodes end the chain", () => {
  const graph = chain("sd3", ["OmniApplyCacheDiT", {}]);
  graph.nodes.push({ id: 10, type: "Reroute", model: 2 });
  graph.nodes.push({ id: 11, type: "OmniApplyTeaCache", widgets: {}, model: 10 });
  assert.deepEqual(ruleProblems(checkGraph(graph, RULES)), ["11 cache.one_method", "11 teacache.family"]);
  graph.nodes[1].mode = 4; // bypass Cache-DiT: TeaCache no longer follows another cache
  assert.deepEqual(ruleProblems(checkGraph(graph, RULES)), ["11 teacache.family"]);
  graph.nodes[1].mode = 2; // mute it: nothing after it runs
  assert.deepEqual(checkGraph(graph, RULES), {});
});

test("presets override Cache-DiT's block counts, as the node does", () => {
  const preset = "DBCache + TaylorSeer + SCM fast (Fn8 B0 W4)";
  const graph = chain("qwen-image", ["OmniApplyCacheDiT", { preset, Fn_compute_blocks: 1 }]);
  assert.match(checkGraph(graph, RULES)["2"][0].first, /= 8\)$/);
  graph.nodes[1].widgets.preset = "custom";
  assert.deepEqual(checkGraph(graph, RULES), {});
});

test("local ranks are counted against this machine's GPUs when it has some", () => {
  const gpuMachine = { ...RULES, machine: { cuda_devices: 2, max_cpu_ranks: 8 } };
  const graph = chain("qwen-image", ["OmniParallelConfig", { ulysses_degree: 4 }]);
  assert.deepEqual(checkGraph(graph, RULES), {}, "8 CPU ranks without GPUs");
  const [problem] = checkGraph(graph, gpuMachine)["2"];
  assert.equal(problem.reason, "it needs 4 local ranks but 2 devices are available");
  graph.nodes[1].widgets.devices = "cpu,cpu,cpu,cpu";
  assert.deepEqual(checkGraph(graph, gpuMachine), {}, "CPU ranks listed explicitly");
  graph.nodes[1].widgets.remote_ranks = 2;
  graph.nodes[1].widgets.devices = "auto";
  assert.deepEqual(checkGraph(graph, gpuMachine), {}, "two of four ranks run on other machines");
});

test("a model whose pipeline has no LoRA loader refuses Load LoRA", () => {
  const rules = structuredClone(RULES);
  rules.models["no-lora-model"] = { ...rules.models["sd3"], lora_components: [] };
  const graph = chain("no-lora-model", ["OmniLoadLoRA", { lora_name: "sub/x.safetensors", component: "auto" }]);
  const [problem] = checkGraph(graph, rules)["2"];
  assert.equal(problem.rule, "lora.loader");
  assert.equal(problem.first, "Load LoRA (x.safetensors)");
});

test("an unknown or broken model leaves its chain unchecked (Load Omni Model reports it)", () => {
  assert.deepEqual(checkGraph(chain("missing", ["OmniApplyTeaCache", {}]), RULES), {});
  const rules = structuredClone(RULES);
  rules.models["broken"] = { error: "model = 'broken': the folder does not exist" };
  assert.deepEqual(checkGraph(chain("broken", ["OmniApplyTeaCache", {}]), rules), {});
  assert.deepEqual(modelSupport("broken", rules), ["cannot load: model = 'broken': the folder does not exist"]);
});

test("Load Omni Model shows what the chosen family supports", () => {
  const [sd3, missing] = modelSupport("stable-diffusion-3.5-medium", RULES);
  assert.match(sd3, /^Stable-Diffusion-3\.5: Cache-DiT, CFG-Parallel, LoRA \(transformer, text_encoder, text_encoder_2\)/);
  assert.equal(missing, "not supported: TeaCache, Seq Parallel, Tensor Parallel");
  const [qwen] = modelSupport("Qwen-Image", RULES);
  assert.match(qwen, /Seq Parallel \(ulysses 2, 4; ring any\)/);
  assert.match(qwen, /Tensor Parallel \(2, 4\)/);
  const [, flux] = modelSupport("FLUX.1-dev", RULES);
  assert.equal(flux, "not supported: CFG-Parallel");
});
