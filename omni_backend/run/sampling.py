"""One denoising run: drive the family's diffusers pipeline with progress, interrupt and features.

We call the diffusers pipeline itself (not a copy of its loop), so a run with no features is the
plain diffusers result, and features attach to the transformer through hooks for the length of
one run (`RunContext.features`), undone in `finally`.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import OmniInterrupted
from ..request import GenerationRequest
from ..system.class_guard import class_guard


@dataclass
class RunControl:
    """Callbacks from the host: progress(step, total) and interrupted() -> bool."""

    progress: Callable[[int, int], None] | None = None
    interrupted: Callable[[], bool] | None = None

    def report_progress(self, step: int, total: int) -> None:
        if self.progress is not None:
            self.progress(step, total)

    def stop_requested(self) -> bool:
        return bool(self.interrupted is not None and self.interrupted())

    def check_interrupt(self) -> None:
        if self.stop_requested():
            raise OmniInterrupted("stopped by the user")


@dataclass
class RunReport:
    """What a run did, feature by feature; shown under the Sample node and logged."""

    sections: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def add(self, name: str, summary: Any) -> None:
        self.sections[name] = summary

    def notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)

    def lines(self) -> list[str]:
        out = []
        for name, summary in self.sections.items():
            text = summary.get("text") if isinstance(summary, dict) else summary
            out.append(f"{name}: {text}")
        return out + [f"note: {n}" for n in self.notices]

    def text(self) -> str:
        return "\n".join(self.lines())


@dataclass
class RunContext:
    pipe: Any
    spec: Any
    request: GenerationRequest
    control: RunControl
    report: RunReport
    state: dict  # the loaded pipeline's long-lived feature state (see PipelineCache)
    # Per-step control hooks that features may register (e.g. a collective interrupt vote).
    step_end_hooks: list = field(default_factory=list)
    # Sums statistics across the ranks that share a decision (TeaCache's skip rule); identity in
    # a single process, an all-reduce over the sequence-parallel group in a worker group.
    reduce_sums: Callable | None = None

    @property
    def family(self):
        return self.spec.family


def sample(ctx: RunContext):
    """Run the pipeline and return raw VAE latents in ComfyUI's layout (float32, CPU)."""
    import torch

    family, request, pipe = ctx.family, ctx.request, ctx.pipe
    features = ctx.spec.session_features()
    patches = any(getattr(feature, "patches_classes", False) for feature in features)
    classes = [type(pipe), *(type(transformer) for _name, transformer in family.transformers(pipe))]
    with class_guard(classes, patches), contextlib.ExitStack() as stack:
        for feature in features:
            session = getattr(feature, "run_session", None)
            if session is not None:
                stack.enter_context(session(ctx))
        stack.enter_context(_interrupt_checks(ctx))

        def stop_agreed(index) -> bool:
            stop = ctx.control.stop_requested()
            for hook in ctx.step_end_hooks:
                stop = hook(index, stop)
            return stop

        def on_step_end(_pipe, index, _timestep, _tensors):
            stop = stop_agreed(index)
            ctx.control.report_progress(index + 1, request.steps)
            if stop:
                raise OmniInterrupted("stopped by the user")
            return {}

        stack.enter_context(_prior_stage_progress(ctx, stop_agreed))

        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        kwargs = dict(
            num_inference_steps=request.steps,
            generator=generator,
            output_type="latent",
            return_dict=False,
        )
        kwargs.update(family.shape_kwargs(request))
        callback = step_callback_kwargs(pipe, on_step_end)
        if callback is not None:
            kwargs.update(callback)
        else:
            stack.enter_context(_step_ends_from_transformer(ctx, on_step_end))
        kwargs.update(family.prompt_kwargs(pipe, request))
        kwargs.update(family.call_kwargs(pipe, request))
        if request.positive is not None:
            ctx.report.add("Text", {"text": f"prompt embeddings from CONDITIONING ({request.positive.tokens} tokens); "
                                            "the prompt text is not used", "tokens": request.positive.tokens})
        elif kwargs.get("prompt") != request.prompt:  # the family rewrote it (LongCat's prompt rewrite)
            ctx.report.add("Prompt", {"text": f"rewritten by the model to: {kwargs['prompt']!r}",
                                      "prompt": kwargs["prompt"]})
        if request.images:
            sizes = ", ".join(f"{image.shape[2]}x{image.shape[1]}" for image in request.images)
            width, height = family.output_size(request)
            ctx.report.add("Input", {"text": f"image(s) {sizes} px, resized by the pipeline's own rules; output "
                                             f"{width}x{height} px",
                                     "image_sizes": [[int(i.shape[2]), int(i.shape[1])] for i in request.images],
                                     "output_size": [width, height]})
        if family.layered:
            width, height = family.output_size(request)
            ctx.report.add("Layers", {"text": f"{request.options['layers']} RGBA layers at {width}x{height} px (resolution "
                                              f"{request.options['resolution']} at the image's aspect; width/height not used)",
                                      "layers": request.options["layers"], "size": [width, height]})
            if not request.prompt.strip() and request.positive is None:
                ctx.report.add("Prompt", {"text": "empty: the pipeline captions the image with its text encoder"})
        stack.enter_context(family.call_context(ctx.spec.model_folder, request))
        ctx.control.report_progress(0, request.steps)
        with torch.inference_mode():
            latents = family.run_pipeline(pipe, kwargs, request.steps)
            latents = family.to_comfy_latent(pipe, latents, request)
    return latents.detach().to("cpu", torch.float32)


def step_callback_kwargs(pipe, on_step_end) -> dict | None:
    """How the pipeline calls back after each step, read from its `__call__`: diffusers' current hook
    `callback_on_step_end(pipe, step, timestep, tensors)`, or the legacy `callback(step, timestep,
    latents)` every `callback_steps` (Stable Audio); None where it takes neither (LongCat)."""
    parameters = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" in parameters:
        return {"callback_on_step_end": on_step_end}
    if "callback" in parameters and "callback_steps" in parameters:
        return {"callback": lambda step, timestep, _latents: on_step_end(None, step, timestep, {}),
                "callback_steps": 1}
    return None


@contextlib.contextmanager
def _step_ends_from_transformer(ctx: RunContext, on_step_end):
    """Step ends for a pipeline without `callback_on_step_end` (LongCat): its loop calls the
    transformer once per branch per step (twice with CFG, else once, under cache_context "cond" /
    "uncond"), so the last call of each step ends it. A forward hook counts the calls: the pipeline's
    own loop runs unchanged, and what runs at a step end (progress, Cancel, the ranks' stop vote) is
    the same as with the callback. CFG-parallel and the caches replace `forward`, never `__call__`,
    so every call still passes the hook."""
    calls_per_step = 2 if ctx.family.runs_two_branches(ctx.pipe, ctx.request) else 1
    calls = [0]

    def after_call(_module, _args, _output):
        calls[0] += 1
        if calls[0] % calls_per_step == 0:
            on_step_end(ctx.pipe, calls[0] // calls_per_step - 1, None, {})

    handles = [transformer.register_forward_hook(after_call)
               for _name, transformer in ctx.family.transformers(ctx.pipe)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _prior_stage_progress(ctx: RunContext, stop_agreed):
    """Progress and Cancel through a stage before denoising (GLM-Image's autoregressive model): a
    forward hook counts its calls, one per generated token, and asks for a stop after each. Every
    rank of a worker group runs the same stage with the same seed, so all vote equally often."""
    module = ctx.family.prior_stage(ctx.pipe)
    if module is None:
        yield
        return
    total, calls = ctx.family.prior_stage_calls(ctx.request), [0]

    def after_call(_module, _args, _output):
        calls[0] += 1
        ctx.control.report_progress(min(calls[0], total), total)
        if stop_agreed(-calls[0]):
            raise OmniInterrupted("stopped by the user")

    handle = module.register_forward_hook(after_call)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _interrupt_checks(ctx: RunContext):
    """Check for a stop before each transformer call too, so a slow step ends the run promptly.

    Only in single-process runs: with several ranks the stop must be agreed at a step boundary
    (a rank leaving between two collectives would hang the others).
    """
    if ctx.spec.world_size() > 1:
        yield
        return
    handles = []
    for _name, transformer in ctx.family.transformers(ctx.pipe):
        handles.append(transformer.register_forward_pre_hook(lambda *_: ctx.control.check_interrupt()))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
