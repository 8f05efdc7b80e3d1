// What the extension sends to the server's graph check and how it shows the answer. Pure logic (no
// DOM, no ComfyUI imports), so node's test runner tests it (web/tests/).
//
// The extension holds no rules: it posts the graph as the editor serializes it (the workflow
// file's UI format) to POST /omni_diffusion/check, which runs the same Python check as
// `omni-diffusion validate` (graph/check.py: check_graph) and answers
// {problems: {nodeId: [{node, title, problem, fix, rule}]}, support: {loaderId: [line]}}.

const PACK_PREFIX = "Omni";
const PASS_THROUGH = new Set(["Reroute", "PrimitiveNode"]);

export function isPackType(type) {
  return String(type).startsWith(PACK_PREFIX);
}

// A signature of what the check reads: the pack's nodes (type, mode, widget values, inputs) and the
// links among them and their reroutes/primitives. Moving a node or editing another pack's node
// leaves it unchanged, so the graph is posted again only when the answer can change.
export function packSignature(serialized) {
  const nodes = (serialized?.nodes || []).filter((n) => isPackType(n.type) || PASS_THROUGH.has(n.type));
  const kept = new Set(nodes.map((n) => n.id));
  const links = (serialized?.links || []).filter((l) => Array.isArray(l) && kept.has(l[1]) && kept.has(l[3]));
  return JSON.stringify({
    nodes: nodes.map((n) => [n.id, n.type, n.mode ?? 0, n.widgets_values ?? null,
      (n.inputs || []).map((slot) => [slot.name, slot.link ?? null])]),
    links,
  });
}

// The lines drawn under a node: its problems with their fixes, else what its model supports.
export function noteLines(answer, nodeId) {
  const id = String(nodeId);
  const problems = answer?.problems?.[id];
  if (problems?.length) {
    return { kind: "problem", lines: problems.map((p) => `⚠ ${p.problem}. Fix: ${p.fix}`) };
  }
  const support = answer?.support?.[id];
  if (support?.length) return { kind: "support", lines: support.map(String) };
  return null;
}
