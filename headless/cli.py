"""`omni-diffusion`: run workflows headless, make tiny test models, run the demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from omni_backend.errors import OmniError, OmniInterrupted
from omni_backend.weights.loading import offline_environment, quiet_libraries
from omni_backend.workers.worker import add_worker_arguments

# Varied subjects and compositions: the fit wants many kinds of trajectories.
FIT_PROMPTS = (
    "a photograph of a red fox in a snowy forest at dawn",
    "a watercolor painting of a lighthouse on a cliff above a stormy sea",
    "a close-up portrait of an old man with a white beard, studio lighting",
    "a bowl of ramen with an egg and green onions on a wooden table",
    "a futuristic city skyline at night with neon signs and flying cars",
    "a minimalist poster with the word OMNI in bold letters",
)


def _cmd_run(args) -> int:
    from ..nodes import comfy_bridge
    from .runner import run_workflow

    comfy_bridge.HEADLESS.show_progress = not args.quiet
    signal.signal(signal.SIGINT, lambda *_: comfy_bridge.HEADLESS.stop.set())  # stop at the next step
    run = run_workflow(args.workflow, models_dir=args.models_dir, output_dir=args.output_dir,
                       input_dir=args.input_dir)
    for node_id, shown in run.ui.items():
        for text in shown.get("text", []):
            print(f"[node {node_id}] {text}")
    for path in run.files:
        print(path)
    return 0


def _cmd_validate(args) -> int:
    from .validate import validate_file

    problems = validate_file(args.workflow, models_dir=args.models_dir, input_dir=args.input_dir)
    for problem in problems:
        print(problem)
    if not problems:
        print("valid")
    return 1 if problems else 0


def _cmd_fit_teacache(args) -> int:
    from omni_backend.cache.teacache_fit import fit_teacache
    from omni_backend.engine import Engine
    from omni_backend.request import GenerationRequest
    from omni_backend.spec import ModelSpec

    spec = ModelSpec.from_folder(args.model, dtype=args.dtype, device=args.device)
    family = spec.family
    requests = [GenerationRequest(prompt=prompt, negative_prompt="", steps=args.steps, seed=seed,
                                  guidance=family.default_guidance if args.guidance is None else args.guidance,
                                  width=args.width, height=args.height)
                for prompt in args.prompt for seed in range(args.seeds)]
    fit = fit_teacache(Engine(), spec, requests)
    print(f"fitted on {len(fit.input_changes)} step pairs ({len(requests)} runs), R^2 {fit.r_squared:.3f}; "
          "paste into Apply TeaCache's coefficients:", file=sys.stderr)
    print(fit.text())
    return 0


def _cmd_make_tiny(args) -> int:
    from omni_backend.families import FAMILIES

    if args.list or not args.family:
        for key, family in FAMILIES.items():
            print(f"{key:12s} {family.title}")
        return 0
    if args.family not in FAMILIES:
        print(f"unknown family {args.family!r}; choose one of: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    if not args.directory:
        print("make-tiny needs a target DIR", file=sys.stderr)
        return 2
    if args.layout == "comfy":
        from omni_backend.single_file.comfy_layout import write_comfy_files

        try:
            written = write_comfy_files(args.family, args.directory, args.weights)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        for path in written.values():
            print(path)
        return 0
    print(FAMILIES[args.family].make_tiny(args.directory))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    for path in run_demo(output_dir=args.output_dir, edit=args.edit):
        print(path)
    return 0


def _cmd_worker(args) -> int:
    from omni_backend.workers.worker import run_worker

    return run_worker(args.rank, args.world_size, args.master, args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni-diffusion", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a ComfyUI workflow file (UI or API format) headless")
    run.add_argument("workflow")
    run.add_argument("--models-dir", default="models", help="a folder laid out like ComfyUI's models/")
    run.add_argument("--output-dir", default="output")
    run.add_argument("--input-dir", default="input")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    run.set_defaults(handler=_cmd_run)

    check = sub.add_parser("validate", help="check a workflow file (UI or API format) without loading weights: "
                                            "prints 'valid', or one line per problem and exits 1")
    check.add_argument("workflow")
    check.add_argument("--models-dir", default="models", help="a folder laid out like ComfyUI's models/")
    check.add_argument("--input-dir", default=None, help="where Load Image finds its files, as for run "
                       "(default: input)")
    check.set_defaults(handler=_cmd_validate)

    fit = sub.add_parser("fit-teacache", help="fit TeaCache coefficients for a model folder (e.g. a fine-tune): "
                                              "prints 5 numbers for Apply TeaCache's coefficients input")
    fit.add_argument("model", help="a diffusers model folder of a family TeaCache supports")
    fit.add_argument("--prompt", action="append", default=None,
                     help="a prompt like the ones you will use (repeat for several; more is better)")
    fit.add_argument("--seeds", type=int, default=2, help="runs per prompt, with seeds 0..N-1")
    fit.add_argument("--steps", type=int, default=25, help="the step count you will sample with")
    fit.add_argument("--guidance", type=float, default=None, help="default: the family's")
    fit.add_argument("--width", type=int, default=1024)
    fit.add_argument("--height", type=int, default=1024)
    fit.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    fit.add_argument("--device", default="auto")
    fit.set_defaults(handler=_cmd_fit_teacache)

    tiny = sub.add_parser("make-tiny", help="write a tiny random-weight model folder (no download)")
    tiny.add_argument("family", nargs="?")
    tiny.add_argument("directory", nargs="?")
    tiny.add_argument("--list", action="store_true", help="list the families")
    tiny.add_argument("--layout", choices=("diffusers", "comfy"), default="diffusers",
                      help="diffusers: a model folder (models/diffusers/NAME); comfy: single files in DIR/"
                           "diffusion_models, DIR/text_encoders and DIR/vae under ComfyUI's template names")
    tiny.add_argument("--weights", choices=("bf16", "fp32", "fp8_e4m3fn", "fp8_scaled"), default="bf16",
                      help="weight format of the comfy layout's files (fp8 modes write the text encoder as "
                           "fp8_scaled, as ComfyUI's templates do)")
    tiny.set_defaults(handler=_cmd_make_tiny)

    worker = sub.add_parser("worker", help="serve as a rank of a multi-machine worker group")
    add_worker_arguments(worker)
    worker.set_defaults(handler=_cmd_worker)

    demo = sub.add_parser("demo", help="run the default workflow on the built-in model")
    demo.add_argument("--output-dir", default="output")
    demo.add_argument("--edit", action="store_true",
                      help="then change the drawing with the built-in edit model (both images are written)")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv=None) -> int:
    offline_environment()
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "fit-teacache" and not args.prompt:
        args.prompt = list(FIT_PROMPTS)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    quiet_libraries()
    try:
        return args.handler(args)
    except (OmniInterrupted, KeyboardInterrupt):
        print("stopped by the user", file=sys.stderr)
        return 130
    except OmniError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
