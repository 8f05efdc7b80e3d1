// Checks the Omni nodes of a graph against the backend's compatibility rules. Pure logic: no DOM,
// no ComfyUI imports, so node's test runner runs it (web/tests/) and the extension reuses it.
//
// The rules document comes from the backend (GET /omni_diffusion/rules, built by
// omni_backend/rules_export.py and nodes/rules_route.py). The conditions below mirror the Python
// rules one for one (compat.py and the feature modules' `problems`); every message is filled from
// the rule's own templates, so wording lives only in Python. tests/test_rules_agreement.py runs
// both checkers on the same workflow files and compares every message, so the two cannot drift.
//
// Semantics (as headless/validate.py): each chain of OMNI_MODEL links is walked from Load Omni
// Model; a node is charged with the problems its output has and its input had not (where the
// combination was introduced). A bypassed node passes its input on; a muted one ends its chain.

const MODE_MUTED = 2;
const MODE_BYPASS = 4;
const LOADER = "OmniLoadModel";

// graph: {nodes: [{id, type, title, mode, widgets: {name: value}, model: id of the node feeding
// the "model" input (or of a Reroute's input), or null}]}.
// Returns {nodeId: [{rule, first, second, reason, fix, message}]} for the nodes with problems.
export function checkGraph(graph, rules) {
  const byId = new Map(graph.nodes.map((node) => [String(node.id), node]));
  const specs = new Map();
  const found = {};

  const upstreamOf = (node) => {
    // Reroutes and bypassed nodes pass their model input through.
    let id = node.model == null ? null : String(node.model);
    const seen = new Set();
    while (id != null && !seen.has(id)) {
      seen.add(id);
      const source = byId.get(id);
      if (!source || source.mode === MODE_MUTED) return null;
      if (source.type !== "Reroute" && source.mode !== MODE_BYPASS) return source;
      id = source.model == null ? null : String(source.model);
    }
    return null;
  };

  const specOf = (node) => {
    const key = String(node.id);
    if (specs.has(key)) return specs.get(key);
    specs.set(key, null); // a cycle gives nothing
    const nodeType = rules.node_types?.[node.type];
    if (!nodeType?.builds_spec || node.mode === MODE_MUTED || node.mode === MODE_BYPASS) return null;
    const widgets = { ...defaultsOf(nodeType), ...(node.widgets || {}) };
    let spec;
    let upstream = null;
    if (node.type === LOADER) {
      spec = loadSpec(widgets, rules);
    } else {
      const source = upstreamOf(node);
      upstream = source ? specOf(source) : null;
      if (!upstream) return null; // nothing to check on (its loader failed or is missing)
      if (!inputsValid(node.type, widgets)) {
        // As the Python validator: a node whose own inputs are wrong is passed over (ComfyUI's queue
        // reports those through the node's VALIDATE_INPUTS); what follows it is still checked.
        specs.set(key, upstream);
        return upstream;
      }
      const refusals = [];
      spec = applyNode(node.type, widgets, upstream, rules, refusals);
      const inherited = new Set(problemsOf(upstream, rules).map(keyOf));
      const fresh = [...refusals, ...problemsOf(spec, rules)].filter((p) => !inherited.has(keyOf(p)));
      if (fresh.length) found[key] = unique(fresh);
    }
    specs.set(key, spec);
    return spec;
  };

  for (const node of graph.nodes) specOf(node);
  return found;
}

// ---- building the spec, node by node (the nodes' apply methods) ---------------------------------
function defaultsOf(nodeType) {
  return Object.fromEntries((nodeType.widgets || []).map(([name, value]) => [name, value]));
}

function loadSpec(widgets, rules) {
  const model = rules.models?.[widgets.model_name];
  if (!model || model.error) return null; // Load Omni Model itself reports it (VALIDATE_INPUTS)
  return { model, family: rules.families[model.family], cache: null, parallel: null, memory: null, loras: [] };
}

function applyNode(type, widgets, spec, rules, refusals) {
  switch (type) {
    case "OmniApplyTeaCache":
      return withCache(spec, { kind: "teacache", title: "Apply TeaCache" }, rules, refusals);
    case "OmniApplyCacheDiT": {
      const settings = { ...widgets, ...(rules.cache_dit_presets?.[widgets.preset] || {}) };
      const cache = { kind: "cache_dit", title: "Apply Cache-DiT",
                      blocks: Number(settings.Fn_compute_blocks) + Number(settings.Bn_compute_blocks) };
      return withCache(spec, cache, rules, refusals);
    }
    case "OmniParallelConfig": {
      const parallel = {
        ulysses: Number(widgets.ulysses_degree), ring: Number(widgets.ring_degree),
        cfg: Number(widgets.cfg_parallel), tp: Number(widgets.tensor_parallel),
        vae: Number(widgets.vae_patch_parallel), devices: parseDevices(widgets.devices),
        remote: Number(widgets.remote_ranks || 0),
      };
      return { ...spec, parallel: worldSize(parallel) > 1 ? parallel : null };
    }
    case "OmniOffloadFP8": {
      const memory = { offload: widgets.offload, fp8: widgets.fp8 };
      return { ...spec, memory: memory.offload === "none" && memory.fp8 === "off" ? null : memory };
    }
    case "OmniLoadLoRA":
      return { ...spec, loras: [...spec.loras, { name: baseName(widgets.lora_name), component: widgets.component }] };
    default:
      return spec;
  }
}

// Whether the node's config would be built at all (ParallelConfig / MemoryConfig __post_init__).
// Only the verdict is mirrored: the messages are the backend's, shown by ComfyUI at queue time.
function inputsValid(type, widgets) {
  if (type === "OmniParallelConfig") {
    const degrees = ["ulysses_degree", "ring_degree", "cfg_parallel", "tensor_parallel", "vae_patch_parallel"]
      .map((name) => Number(widgets[name]));
    if (!degrees.every((d) => Number.isInteger(d) && d >= 1)) return false;
    const [ulysses, ring, cfg, tp, vae] = degrees;
    const world = ulysses * ring * cfg * tp;
    const remote = Number(widgets.remote_ranks || 0);
    const devices = parseDevices(widgets.devices);
    return (cfg === 1 || cfg === 2) && remote >= 0 && remote < world
      && (!remote || String(widgets.rendezvous ?? "").trim() !== "")
      && devices.every((d) => d === "cpu" || /^cuda:\d+$/.test(d))
      && (!devices.length || devices.length === world - remote) && vae <= world;
  }
  if (type === "OmniOffloadFP8") return !(widgets.fp8_text_encoder && widgets.fp8 === "off");
  return true;
}

function withCache(spec, cache, rules, refusals) {
  if (spec.cache) refusals.push(problem(rules, "cache.one_method", { new: cache.title, existing: spec.cache.title }));
  return { ...spec, cache };
}

function parseDevices(text) {
  const value = String(text ?? "").trim();
  if (value === "" || value === "auto") return [];
  return value.split(",").map((part) => part.trim()).filter(Boolean);
}

function baseName(path) {
  return String(path ?? "").split(/[\\/]/).pop();
}

function worldSize(parallel) {
  return parallel ? parallel.cfg * parallel.ulysses * parallel.ring * parallel.tp : 1;
}

// parallel/config.py ParallelConfig.describe()
function describe(parallel) {
  const parts = [["ulysses", parallel.ulysses], ["ring", parallel.ring], ["cfg", parallel.cfg],
                 ["tp", parallel.tp], ["vae patches", parallel.vae]]
    .filter(([, value]) => value > 1).map(([name, value]) => `${name} ${value}`);
  return `${worldSize(parallel)} ranks (${parts.join(", ") || "no split"})`;
}

// parallel/config.py available_local_ranks()
function availableLocalRanks(parallel, machine) {
  const devices = parallel.devices;
  const onlyCpu = devices.length > 0 && devices.every((d) => d === "cpu");
  if (machine.cuda_devices > 0 && !onlyCpu) {
    if (devices.length) {
      return devices.filter((d) => d === "cpu" || Number(d.split(":")[1]) < machine.cuda_devices).length;
    }
    return machine.cuda_devices;
  }
  return machine.max_cpu_ranks;
}

function range(from, to) {
  return Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);
}

// parallel/config.py number_list()
function numberList(numbers) {
  return `[${numbers.join(", ")}]`;
}

// ---- the rules (same order and conditions as the Python rules) ----------------------------------
function problemsOf(spec, rules) {
  if (!spec) return [];
  const found = [];
  const add = (id, values) => found.push(problem(rules, id, values));
  const { model, family, memory, parallel, cache } = spec;
  const world = worldSize(parallel);

  // compat.py: memory
  if (memory && memory.offload === "layerwise" && world > 1) {
    add("memory.layerwise_offload_multi_device", { devices: world });
  }
  if (memory && memory.fp8 !== "off" && parallel && parallel.tp > 1) {
    add("memory.fp8_tensor_parallel", { fp8: memory.fp8, degree: parallel.tp });
  }
  // cache/teacache.py, cache/cachedit.py
  if (cache?.kind === "teacache" && !family.teacache) {
    const supported = Object.values(rules.families).filter((f) => f.teacache).map((f) => f.title).join(", ");
    add("teacache.family", { family: family.title, supported });
  }
  if (cache?.kind === "cache_dit") {
    const smallest = Math.min(...model.block_counts);
    if (cache.blocks >= smallest) add("cache_dit.blocks_left", { used: cache.blocks, family: family.title, smallest });
  }
  // parallel/config.py ParallelConfig.problems
  if (parallel) {
    const named = { layout: describe(parallel), family: family.title };
    const localRanks = world - parallel.remote;
    const available = availableLocalRanks(parallel, rules.machine);
    if (localRanks > available) add("parallel.devices", { ...named, needed: localRanks, available });
    if (parallel.ulysses * parallel.ring > 1 && !family.sequence_parallel) add("parallel.sequence_plan", named);
    if (parallel.tp > 1 && !family.tensor_parallel) {
      add("parallel.tensor_plan", named);
    } else if (parallel.tp > 1) {
      const widths = Object.entries(model.tensor_parallel_widths);
      const uneven = widths.filter(([, width]) => width % parallel.tp);
      if (uneven.length) {
        const working = range(2, 64).filter((d) => widths.every(([, width]) => width % d === 0));
        add("parallel.tensor_widths", { ...named, degree: parallel.tp,
          uneven: uneven.map(([name, width]) => `${name} ${width}`).join(", "),
          working: numberList(working.length ? working : [1]) });
      }
    }
    const heads = model.attention_heads;
    const split = parallel.ulysses * parallel.tp;
    if (heads % split && heads % parallel.tp === 0) {
      const working = range(1, heads).filter((d) => heads % (d * parallel.tp) === 0);
      add("parallel.heads", { ...named, heads, split, working: numberList(working) });
    }
    if (parallel.cfg > 1 && !model.has_true_cfg) add("parallel.cfg_branch", named);
  }
  // lora/config.py
  for (const lora of spec.loras) {
    const available = model.lora_components;
    if (!available.length) {
      add("lora.loader", { lora: lora.name, family: family.title });
    } else if (lora.component !== "auto" && !available.includes(lora.component)) {
      add("lora.component", { lora: lora.name, component: lora.component, family: family.title,
                              available: available.join(", ") });
    }
  }
  return found;
}

// ---- messages --------------------------------------------------------------------------------
// Fills a Python str.format template; values are text or whole numbers (compat.RuleDef).
export function fillTemplate(template, values) {
  return template.replace(/\{(\w+)\}/g, (_, name) => {
    if (!(name in values)) throw new Error(`rule template needs a value for {${name}}`);
    return String(values[name]);
  });
}

function problem(rules, id, values) {
  const rule = rules.rules.find((r) => r.id === id);
  if (!rule) throw new Error(`the rules document has no rule ${id} (backend and extension out of step)`);
  const [first, second, reason, fix] = [rule.first, rule.second, rule.reason, rule.fix]
    .map((template) => fillTemplate(template, values));
  // errors.py OmniIncompatibleError's wording
  return { rule: id, first, second, reason, fix, message: `${first} cannot be combined with ${second}: ${reason}. Fix: ${fix}` };
}

function keyOf(p) {
  return `${p.rule}\n${p.message}`;
}

function unique(problems) {
  const seen = new Set();
  return problems.filter((p) => !seen.has(keyOf(p)) && seen.add(keyOf(p)));
}

// ---- what Load Omni Model shows -----------------------------------------------------------------
// Lines naming the features the chosen model supports (and, for parallel methods, the degrees
// its heads and widths allow), from the same document.
export function modelSupport(modelName, rules) {
  const model = rules.models?.[modelName];
  if (!model) return [];
  if (model.error) return [`cannot load: ${model.error}`];
  const family = rules.families[model.family];
  const names = rules.features;
  const yes = [];
  const no = [];
  for (const [key, supported] of Object.entries(family.supports)) {
    let ok = supported;
    let label = names[key] ?? key;
    if (key === "cfg_parallel") ok = supported && model.has_true_cfg;
    if (key === "lora" && ok) label += ` (${model.lora_components.join(", ")})`;
    if (key === "tensor_parallel" && ok) {
      const widths = Object.values(model.tensor_parallel_widths);
      const degrees = range(2, 64).filter((d) => widths.every((w) => w % d === 0));
      label += ` (${degrees.join(", ") || "none"})`;
    }
    if (key === "sequence_parallel" && ok) {
      const heads = model.attention_heads;
      label += ` (ulysses ${range(2, heads).filter((d) => heads % d === 0).join(", ") || "-"}; ring any)`;
    }
    (ok ? yes : no).push(label);
  }
  const lines = [`${family.title}: ${yes.join(", ")}`];
  if (no.length) lines.push(`not supported: ${no.join(", ")}`);
  return lines;
}

// ---- graphs from saved workflow files (UI format) ----------------------------------------------
// What app.graph serializes: widgets_values by position in INPUT_TYPES order (node_types lists
// the order), links as [id, source, source slot, target, target slot, type].
export function graphFromWorkflow(workflow, rules) {
  const links = new Map((workflow.links || []).map((link) => [link[0], link]));
  const nodes = (workflow.nodes || []).map((node) => {
    const names = (rules.node_types?.[node.type]?.widgets || []).map(([name]) => name);
    const saved = node.widgets_values;
    const widgets = Array.isArray(saved)
      ? Object.fromEntries(names.map((name, i) => [name, saved[i]]).filter(([, value]) => value !== undefined))
      : { ...(saved || {}) };
    const input = (node.inputs || []).find((slot) => slot.name === "model" || node.type === "Reroute");
    const link = input?.link != null ? links.get(input.link) : null;
    return { id: String(node.id), type: node.type, title: node.title || rules.node_types?.[node.type]?.title || node.type,
             mode: node.mode || 0, widgets, model: link ? String(link[1]) : null };
  });
  return { nodes };
}
