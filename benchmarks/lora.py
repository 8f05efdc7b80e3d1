"""LoRA: switching adapters/strengths vs a full reload, and the per-step cost of active adapters.

    python benchmarks/lora.py --json
    {"switch_vs_reload_ratio": ..., "step_overhead_ratio": ...}

switch_vs_reload_ratio: time to go from one LoRA stack to another (A x1.0 <-> A x0.5 + B x0.8) on
a loaded pipeline whose adapters are loaded (what a changed strength or an added/removed Load LoRA
node costs), over a full reload (base weights from disk plus the two adapter files: what it would
cost if LoRAs were part of the loaded weights). Both go through the same LoRA run sessions, without
sampling; alternated, median of each.

step_overhead_ratio: median denoising-step time with the two adapters active (fused into the weights for
the run, see omni_backend/lora/fusing.py; OMNI_FUSE_LORA=0 measures them unfused) over the base model's,
each on its own engine (the base one never saw a LoRA, so it has no peft wrappers at all); step
times come from the progress callback, the first step (text encoding) left out; runs alternate.

Tiny Qwen-Image (hidden size 64): a rank-r adapter is large relative to these layers, so the step
overhead here is an upper bound for real models (hidden size 3072).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time

from _common import timed  # offline mode and the pack on sys.path

from omni_backend.engine import Engine
from omni_backend.families import FAMILIES
from omni_backend.lora import LoraSpec
from omni_backend.request import GenerationRequest
from omni_backend.run.sampling import RunContext, RunControl, RunReport
from omni_backend.spec import ModelSpec
from omni_backend.tiny.lora import make_tiny_lora


def enter_stack(engine: Engine, spec: ModelSpec, request: GenerationRequest) -> None:
    """Enter and leave the spec's LoRA sessions on its loaded pipeline (loading what is missing)."""
    entry = engine.loaded(spec)
    ctx = RunContext(pipe=entry.pipe, spec=spec, request=request, control=RunControl(), report=RunReport(),
                     state=entry.state)
    with contextlib.ExitStack() as stack:
        for lora in spec.loras:
            stack.enter_context(lora.run_session(ctx))


def step_times(engine: Engine, spec: ModelSpec, request: GenerationRequest) -> list[float]:
    stamps = []
    engine.generate(spec, request, RunControl(progress=lambda *_: stamps.append(time.perf_counter())))
    return [later - earlier for earlier, later in zip(stamps[1:], stamps[2:])]  # stamps[0]: before step 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    family = FAMILIES["qwen-image"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(family.make_tiny(f"{tmp}/qwen-image"))
        file_a = str(make_tiny_lora(folder, f"{tmp}/loras/a.safetensors", rank=args.rank, seed=1))
        file_b = str(make_tiny_lora(folder, f"{tmp}/loras/b.safetensors", rank=args.rank, seed=2,
                                    layout="kohya"))
        base = ModelSpec.from_folder(folder, dtype="fp32", device="cpu")
        stacks = [base.replace(loras=(LoraSpec(file_a, 1.0),)),
                  base.replace(loras=(LoraSpec(file_a, 0.5), LoraSpec(file_b, 0.8)))]
        request = GenerationRequest(prompt="a cat on a windowsill", negative_prompt=" ", steps=args.steps,
                                    guidance=4.0, seed=0, width=args.size, height=args.size)

        # Switch vs reload.
        engine = Engine()
        enter_stack(engine, stacks[1], request)  # base and both adapters loaded
        loads = engine.pipelines.load_count
        switch, reload = [], []
        for repeat in range(args.repeats):
            for spec in stacks:
                switch.append(timed(lambda: enter_stack(engine, spec, request)))
            assert engine.pipelines.load_count == loads, "a switch reloaded the base weights"
            fresh = Engine()
            reload.append(timed(lambda: enter_stack(fresh, stacks[repeat % 2], request)))
            fresh.unload_all()

        # Step time with two active adapters vs the base model.
        base_engine = Engine()
        base_engine.generate(base, request)  # warm up both
        engine.generate(stacks[1], request)
        base_steps, lora_steps = [], []
        for _ in range(max(2, args.repeats // 2)):
            base_steps += step_times(base_engine, base, request)
            lora_steps += step_times(engine, stacks[1], request)

    seconds = {"switch": statistics.median(switch), "reload": statistics.median(reload),
               "base_step": statistics.median(base_steps), "lora_step": statistics.median(lora_steps)}
    result = {
        "switch_vs_reload_ratio": round(seconds["switch"] / seconds["reload"], 4),
        "step_overhead_ratio": round(seconds["lora_step"] / seconds["base_step"], 3),
        "seconds": {name: round(value, 4) for name, value in seconds.items()},
        "model": f"tiny qwen-image, {args.size}px, {args.steps} steps, true CFG, two rank-{args.rank} LoRAs "
                 "on the attention projections",
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
