// The Omni Diffusion browser extension: marks incompatible feature combinations while the graph is
// edited, shows on Load Omni Model what the chosen model supports, and shows what Sample and
// VAE Decode Patch-Parallel report after a run.
//
// It holds no rules: it posts the graph to the server (POST /omni_diffusion/check, see
// nodes/check_route.py), which runs the same Python check as `omni-diffusion validate`, and draws
// the answer. graph_request.js holds the pure parts (tested with node's test runner).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { isPackType, noteLines, packSignature } from "./graph_request.js";

const CHECK_ROUTE = "/omni_diffusion/check";
const POLL_MS = 400; // how often the graph is compared with the last checked one
const DEBOUNCE_MS = 250; // a burst of edits (dragging a slider) is checked once
const PROBLEM_COLOR = "#a33";
const PROBLEM_BGCOLOR = "#533";
const NOTE_FONT = "12px sans-serif";
const NOTE_COLORS = { problem: "#f88", support: "#9b9", report: "#bbb" };
// Sample and the decoders, and the old Sample and decoder that saved workflows hold.
const REPORTING_NODES = new Set(["OmniSampleV2", "OmniVAEDecodeImages", "OmniVAEDecodeAudio", "OmniVAEDecodeLayers",
  "OmniSample", "OmniVAEDecode"]);

const state = {
  answer: null, // the server's last answer
  lastSignature: "",
  timer: null,
  asked: 0, // answers to older posts than the newest one are dropped
};

function graphNodes() {
  return app.graph?._nodes ?? app.graph?.nodes ?? [];
}

function isOmni(node) {
  return isPackType(node.comfyClass ?? node.type);
}

// ---- checking ----------------------------------------------------------------------------------
function poll() {
  if (!app.graph) return;
  const signature = packSignature(app.graph.serialize());
  if (signature !== state.lastSignature) {
    state.lastSignature = signature;
    scheduleCheck();
  }
}

function scheduleCheck() {
  clearTimeout(state.timer);
  state.timer = setTimeout(runCheck, DEBOUNCE_MS);
}

async function runCheck() {
  if (!app.graph) return;
  const number = ++state.asked;
  let answer = null;
  try {
    const response = await api.fetchApi(CHECK_ROUTE, { method: "POST", body: JSON.stringify(app.graph.serialize()) });
    const body = await response.json();
    if (!response.ok || body.error) throw new Error(body.error || `HTTP ${response.status}`);
    answer = body;
  } catch (error) {
    console.warn("Omni Diffusion: the graph check failed; feature combinations are checked when the graph runs", error);
  }
  if (number !== state.asked) return; // a newer check is on its way
  state.answer = answer;
  for (const node of graphNodes()) {
    if (isOmni(node)) markNode(node, answer?.problems?.[String(node.id)]);
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
  const notes = noteLines(state.answer, node.id);
  if (notes) return { color: NOTE_COLORS[notes.kind], lines: notes.lines };
  if (REPORTING_NODES.has(node.comfyClass ?? node.type) && node.__omniReport?.length) {
    return { color: NOTE_COLORS.report, lines: node.__omniReport };
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
