// The Omni Diffusion browser extension: marks incompatible feature combinations while the graph is
// edited, shows on Load Omni Model what the chosen model supports, and shows what Sample and
// VAE Decode Patch-Parallel report after a run.
//
// It holds no rules: it fetches them from the backend (GET /omni_diffusion/rules, see
// nodes/rules_route.py) and checks the graph with graph_check.js, the pure module that node's test
// runner tests against the same workflow files as the Python validator.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { checkGraph, modelSupport } from "./graph_check.js";

const RULES_ROUTE = "/omni_diffusion/rules";
const POLL_MS = 400; // how often the graph is compared with the last checked one (cheap: Omni nodes only)
const DEBOUNCE_MS = 150; // a burst of edits (dragging a slider) is checked once
const REFETCH_MS = 5000; // at most this often when a chosen model is missing from the rules (new folder)
const PROBLEM_COLOR = "#a33";
const PROBLEM_BGCOLOR = "#533";
const NOTE_FONT = "12px sans-serif";
const REPORTING_NODES = new Set(["OmniSample", "OmniVAEDecode"]);

const state = {
  rules: null,
  fetchedAt: 0,
  problems: {}, // node id -> [problem]
  lastSignature: "",
  timer: null,
};

async function fetchRules() {
  state.fetchedAt = Date.now();
  try {
    const response = await api.fetchApi(RULES_ROUTE);
    const body = await response.json();
    if (!response.ok || body.error) throw new Error(body.error || `HTTP ${response.status}`);
    state.rules = body;
  } catch (error) {
    console.warn(`Omni Diffusion: could not read ${RULES_ROUTE}; feature combinations are checked when the graph runs`, error);
  }
}

// ---- the graph in graph_check.js's form -------------------------------------------------------
function graphNodes() {
  return app.graph?._nodes ?? app.graph?.nodes ?? [];
}

function linkSource(linkId) {
  if (linkId == null) return null;
  const links = app.graph.links;
  const link = links instanceof Map ? links.get(linkId) : links?.[linkId];
  return link ? String(link.origin_id) : null;
}

function isOmni(node) {
  return String(node.comfyClass ?? node.type).startsWith("Omni");
}

function simpleGraph() {
  const nodes = [];
  for (const node of graphNodes()) {
    const type = node.comfyClass ?? node.type;
    if (!isOmni(node) && type !== "Reroute") continue;
    const input = (node.inputs || []).find((slot) => slot.name === "model" || type === "Reroute");
    nodes.push({
      id: String(node.id), type, title: node.title, mode: node.mode ?? 0,
      widgets: Object.fromEntries((node.widgets || []).map((w) => [w.name, w.value])),
      model: linkSource(input?.link),
    });
  }
  return { nodes };
}

// ---- checking ----------------------------------------------------------------------------------
function scheduleCheck() {
  clearTimeout(state.timer);
  state.timer = setTimeout(runCheck, DEBOUNCE_MS);
}

function poll() {
  if (!app.graph) return;
  const signature = JSON.stringify(simpleGraph());
  if (signature !== state.lastSignature) {
    state.lastSignature = signature;
    scheduleCheck();
  }
}

async function runCheck() {
  const graph = simpleGraph();
  const unknownModel = graph.nodes.some((n) => n.type === "OmniLoadModel" && state.rules
    && !(n.widgets.model_name in (state.rules.models || {})));
  if ((!state.rules || unknownModel) && Date.now() - state.fetchedAt > REFETCH_MS) await fetchRules();
  if (!state.rules) return;
  try {
    state.problems = checkGraph(graph, state.rules);
  } catch (error) {
    console.warn("Omni Diffusion: graph check failed", error);
    state.problems = {};
  }
  for (const node of graphNodes()) {
    if (isOmni(node)) markNode(node, state.problems[String(node.id)]);
  }
  app.graph.setDirtyCanvas(true, true);
}

function markNode(node, problems) {
  if (problems?.length) {
    if (!node.__omniSavedColors) node.__omniSavedColors = { color: node.color, bgcolor: node.bgcolor };
    node.color = PROBLEM_COLOR;
    node.bgcolor = PROBLEM_BGCOLOR;
  } else if (node.__omniSavedColors) {
    node.color = node.__omniSavedColors.color;
    node.bgcolor = node.__omniSavedColors.bgcolor;
    delete node.__omniSavedColors;
  }
}

// ---- drawing notes under a node ---------------------------------------------------------------
function notesFor(node) {
  const type = node.comfyClass ?? node.type;
  const problems = state.problems[String(node.id)];
  if (problems?.length) {
    return { color: "#f88", lines: problems.map((p) => `⚠ ${p.second}: ${p.reason}. Fix: ${p.fix}`) };
  }
  if (type === "OmniLoadModel" && state.rules) {
    const name = (node.widgets || []).find((w) => w.name === "model_name")?.value;
    return { color: "#9b9", lines: modelSupport(name, state.rules) };
  }
  if (REPORTING_NODES.has(type) && node.__omniReport?.length) {
    return { color: "#bbb", lines: node.__omniReport };
  }
  return null;
}

function wrap(ctx, text, width) {
  const lines = [];
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(" ")) {
      const candidate = line ? `${line} ${word}` : word;
      if (line && ctx.measureText(candidate).width > width) {
        lines.push(line);
        line = word;
      } else {
        line = candidate;
      }
    }
    lines.push(line);
  }
  return lines;
}

function drawNotes(node, ctx) {
  const notes = notesFor(node);
  if (!notes || node.flags?.collapsed) return;
  ctx.save();
  ctx.font = NOTE_FONT;
  ctx.fillStyle = notes.color;
  ctx.textAlign = "left";
  const width = Math.max(node.size[0], 160);
  let y = node.size[1] + 16;
  for (const text of notes.lines) {
    for (const line of wrap(ctx, text, width)) {
      ctx.fillText(line, 0, y);
      y += 15;
    }
  }
  ctx.restore();
}

// ---- the extension ----------------------------------------------------------------------------
app.registerExtension({
  name: "omni_diffusion.graph_check",

  async setup() {
    await fetchRules();
    setInterval(poll, POLL_MS);
    // Sample and VAE Decode Patch-Parallel return {"ui": {"text": [report]}}: show it on the node.
    api.addEventListener("executed", ({ detail }) => {
      const node = app.graph?.getNodeById?.(detail?.display_node ?? detail?.node);
      const text = detail?.output?.text;
      if (!node || !REPORTING_NODES.has(node.comfyClass ?? node.type) || !Array.isArray(text)) return;
      node.__omniReport = text.map(String);
      app.graph.setDirtyCanvas(true, true);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.name).startsWith("Omni")) return;
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
      const result = draw?.apply(this, [ctx, ...rest]);
      drawNotes(this, ctx);
      return result;
    };
  },

  nodeCreated(node) {
    if (isOmni(node)) scheduleCheck(); // a new node is checked at once, not at the next poll
  },
});
