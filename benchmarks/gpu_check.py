"""One pass over the engine's CUDA-only paths on one GPU, each against the plain path it replaces.

    python benchmarks/gpu_check.py [--json]
    {"check": "fp8.weight_only", "ok": true, "max_abs_diff": ..., "time_ratio": ..., "note": "..."}

Written without a GPU (this project has none): it has not been run on one yet. Without CUDA it prints
one line saying so and exits 0. On one CUDA GPU it should take a few minutes, well under 10 (an
estimate: the inductor compile of a Qwen-Image block should be most of it), and about 6 GB of GPU
memory (the 6 resident blocks of the offload check; flex's uncompiled score matrix) and 5 GB of host
memory (the offloaded blocks' pinned copies).

Shapes are Qwen-Image's (omni_backend/families/qwen_image/single_file.py: 24 heads x 128, width 3072, text
width 3584) at 1024 px: 64 x 64 = 4096 image tokens and 256 text tokens, bf16, random values.
Checks (each calls the engine's own code; the plain path is what runs without the feature):
- ring.*: sequence-parallel Ring attention's per-step work on CUDA, `sp_attention.local_attention`
  (torch's fused flash kernel without a mask, the memory-efficient one with a key padding mask: they
  return the log-sum-exp) and `sp_attention.merge`, for --ring-degree ranks run one after another on
  this GPU in the order `ring_attention` receives the K/V shards; and `ring_attention` itself on a
  process group of one rank. NCCL refuses two ranks on one GPU and gloo cannot send CUDA tensors point
  to point, so the P2P exchange itself needs two GPUs (tests/parallel/test_parallel.py runs it on CPU ranks with
  gloo). Plain path: diffusers' dispatcher on "native" (torch SDPA) over the whole sequence.
- attention.<backend>: diffusers' `dispatch_attention_fn` on each backend (flash-attn, FA3, sage,
  xformers, flex, torch's SDPA kernels), against "native". A backend whose package is missing, or
  whose diffusers checks refuse this GPU, is a row with ok null and the reason. Backends that
  download kernels from the Hub are left out unless named with --attention-backends.
- fp8.weight_only / fp8.w8a8: `memory.fp8.FP8Linear` (weight-only, and `torch._scaled_mm` through
  `w8a8_linear` when `w8a8_supported` says this GPU can) on a 3072 -> 12288 linear (the MLP's up
  projection) over 4352 tokens, against bf16 `F.linear`.
- compile.<backend>: `CompileConfig(backend).run_session` (regional compile: diffusers'
  `compile_repeated_blocks`) on a 2-block Qwen-Image DiT, against eager; the first compiled call is
  timed apart (compile time) and Dynamo's recompiles in the warm calls are counted.
- offload.layerwise: `memory.layerwise_offload.install_layerwise_offload` (BlockWindow: pinned host
  copies, prefetch on a copy stream) on a 6-block DiT with --window blocks on the GPU, against the
  same blocks resident; also the peak CUDA memory of a forward either way.

Each row: ok (within the check's tolerance, stated in its note; null when skipped), max_abs_diff
against the plain path, time_ratio (median seconds of the path over the plain path's, runs
alternated where both can run side by side, each ended by torch.cuda.synchronize). Tolerances:
offload exactly equal; attention and ring max abs diff <= 2e-2 x the plain output's max abs value
(sage: 1e-1, its QK^T is int8); FP8 <= 1e-1 x (e4m3 keeps 3 mantissa bits); compile <= 5e-2 x.
A check that raises is a row with ok false and the error; the others still run. Exit code 1 when
any row is not ok, else 0 (skipped rows do not fail).

Development without a GPU: `--device cpu --small` runs the same checks at small shapes on the CPU
where their comparison can run there (CUDA-only backends and w8a8 become skipped rows; ring runs
torch's CPU flash kernel, offload the zero-copy window, compile defaults to aot_eager).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

CHECKS = ("ring", "attention", "fp8", "compile", "offload")
# diffusers backends that run from an installed package or torch itself: name -> (CUDA only, tolerance)
ATTENTION_BACKENDS = {
    "_native_flash": (True, 2e-2), "_native_efficient": (True, 2e-2), "_native_cudnn": (True, 2e-2),
    "_native_math": (False, 2e-2), "flex": (False, 2e-2), "flash": (True, 2e-2), "flash_varlen": (True, 2e-2),
    "_flash_3": (True, 2e-2), "_flash_varlen_3": (True, 2e-2), "xformers": (True, 2e-2), "sage": (True, 1e-1),
    "sage_varlen": (True, 1e-1), "_sage_qk_int8_pv_fp16_cuda": (True, 1e-1),
    "_sage_qk_int8_pv_fp8_cuda": (True, 1e-1), "_sage_qk_int8_pv_fp8_cuda_sm90": (True, 1e-1),
    "_sage_qk_int8_pv_fp16_triton": (True, 1e-1),
}
HUB_TOLERANCE = 1e-1  # a backend named with --attention-backends outside the list above (Hub kernels)
ATTENTION_RTOL, FP8_RTOL, COMPILE_RTOL = 2e-2, 1e-1, 5e-2
NO_CUDA = "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to check"


@dataclass(frozen=True)
class Shapes:
    label: str
    dit: dict  # QwenImageTransformer2DModel config without num_layers
    image_hw: tuple[int, int]  # latent patches: image tokens = h x w
    text_tokens: int
    text_padding: int  # text tokens masked out in the masked checks
    linear: tuple[int, int]  # FP8: in_features, out_features
    offload_blocks: int
    compile_blocks: int = 2

    @property
    def heads(self) -> int:
        return self.dit["num_attention_heads"]

    @property
    def head_dim(self) -> int:
        return self.dit["attention_head_dim"]

    @property
    def tokens(self) -> int:
        return self.image_hw[0] * self.image_hw[1] + self.text_tokens


def real_shapes() -> Shapes:
    from omni_backend.families.qwen_image.single_file import TRANSFORMER

    dit = {key: value for key, value in TRANSFORMER.items() if key != "num_layers"}
    width = dit["num_attention_heads"] * dit["attention_head_dim"]
    return Shapes("Qwen-Image at 1024 px", dit, (64, 64), 256, 32, (width, 4 * width), offload_blocks=6)


SMALL = Shapes("small (development)",
               {"patch_size": 2, "in_channels": 64, "out_channels": 16, "attention_head_dim": 32,
                "num_attention_heads": 4, "joint_attention_dim": 32, "guidance_embeds": False,
                "axes_dims_rope": [8, 12, 12]},
               (16, 16), 32, 8, (128, 512), offload_blocks=4)


@dataclass
class Row:
    check: str
    ok: bool | None
    max_abs_diff: float | None = None
    time_ratio: float | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return {"check": self.check, "ok": self.ok,
                "max_abs_diff": None if self.max_abs_diff is None else float(f"{self.max_abs_diff:.4g}"),
                "time_ratio": None if self.time_ratio is None else round(self.time_ratio, 3), "note": self.note}


@dataclass
class Bench:
    device: torch.device
    shapes: Shapes
    repeats: int
    dtype: torch.dtype = torch.bfloat16
    rows: list = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, candidates: dict) -> dict:
        """Median seconds per candidate after one warm-up call each, calls alternated."""
        times = {name: [] for name in candidates}
        for function in candidates.values():
            function()
        for _ in range(self.repeats):
            for name, function in candidates.items():
                self.sync()
                start = time.perf_counter()
                function()
                self.sync()
                times[name].append(time.perf_counter() - start)
        return {name: statistics.median(values) for name, values in times.items()}

    def ratio(self, path, plain) -> float:
        seconds = self.seconds({"path": path, "plain": plain})
        return seconds["path"] / seconds["plain"]

    def randn(self, *shape, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=self.device) * scale).to(self.dtype)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def within(diff: float, reference: torch.Tensor, rtol: float) -> bool:
    return diff <= rtol * reference.float().abs().max().item()


# ---- ring attention ---------------------------------------------------------------------------------
def joint_qkv(bench: Bench, masked: bool):
    """q, k, v [1, tokens, heads, head_dim] in Qwen-Image's joint order (text, then image), and the key
    padding mask [1, tokens] (True = attend) with the text's last tokens padded, when masked."""
    s = bench.shapes
    q, k, v = (bench.randn(1, s.tokens, s.heads, s.head_dim) for _ in range(3))
    mask = None
    if masked:
        mask = torch.ones(1, s.tokens, dtype=torch.bool, device=bench.device)
        mask[:, s.text_tokens - s.text_padding:s.text_tokens] = False
    return q, k, v, mask


def ring_by_shards(query, key, value, mask, degree: int):
    """What `ring_attention` computes on `degree` ranks, the ranks run one after another on this device:
    each rank's query shard (uneven shards, as the sequence-parallel split hook cuts them) against the K/V
    shards in the order the ring delivers them (its own first, then rank - 1, rank - 2, ...), merged by
    the log-sum-exp."""
    from omni_backend.parallel.sp_attention import local_attention, merge

    shards = list(zip(key.tensor_split(degree, dim=1), value.tensor_split(degree, dim=1),
                      mask.tensor_split(degree, dim=1) if mask is not None else [None] * degree))
    outputs = []
    for rank, q in enumerate(query.tensor_split(degree, dim=1)):
        out = lse = None
        for step in range(degree):
            k, v, m = shards[(rank - step) % degree]
            out, lse = merge(out, lse, *local_attention(q, k, v, m, None))
        outputs.append(out.to(query.dtype))
    return torch.cat(outputs, dim=1)


def native_attention(query, key, value, mask):
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn(query, key, value, attn_mask=None if mask is None else mask[:, None, None, :],
                                 backend="native")


def kernel_note(bench: Bench, q, k, v, mask) -> tuple[str | None, str]:
    from omni_backend.parallel.sp_attention import fused_kernel_for

    if not bench.cuda:
        return "cpu", "torch's CPU flash kernel ran (the fused CUDA kernels run on CUDA only)"
    kernel = fused_kernel_for(*(x.transpose(1, 2) for x in (q, k, v)), mask)
    if kernel is None:
        return None, "torch accepts neither fused kernel for these inputs here: the portable math fallback ran"
    return kernel, f"torch's fused {kernel} kernel ran"


def check_ring(bench: Bench, degree: int):
    for name, masked, expected in (("ring.fused_flash", False, "flash"),
                                   ("ring.fused_efficient_masked", True, "efficient")):
        yield name, lambda masked=masked, name=name, expected=expected: ring_row(bench, name, masked, expected, degree)
    yield "ring.ring_attention_1_rank", lambda: ring_entry_row(bench)


@torch.inference_mode()
def ring_row(bench: Bench, name: str, masked: bool, expected: str, degree: int) -> Row:
    torch.manual_seed(0)
    q, k, v, mask = joint_qkv(bench, masked)
    first_k, first_v = k.tensor_split(degree, dim=1)[0], v.tensor_split(degree, dim=1)[0]
    first_mask = None if mask is None else mask.tensor_split(degree, dim=1)[0]
    kernel, note = kernel_note(bench, q.tensor_split(degree, dim=1)[0], first_k, first_v, first_mask)
    reference = native_attention(q, k, v, mask)
    out = ring_by_shards(q, k, v, mask, degree)
    diff = max_abs(out, reference)
    ratio = bench.ratio(lambda: ring_by_shards(q, k, v, mask, degree), lambda: native_attention(q, k, v, mask))
    ok = within(diff, reference, ATTENTION_RTOL) if kernel is not None else None
    if bench.cuda and kernel not in (None, expected):
        note += f" (expected {expected})"
    return Row(name, ok, diff, ratio, f"{note}; {degree} ring shards run one after another, merged by "
               f"log-sum-exp, vs native SDPA over {q.shape[1]} tokens{' with text padding masked' if masked else ''}; "
               f"ok: max abs diff <= {ATTENTION_RTOL:g} x max |native|")


def ring_entry_row(bench: Bench) -> Row:
    """`ring_attention` itself on a process group of one rank (NCCL on CUDA, as the workers use; gloo on
    the CPU): its size exchange, mask transport and one fused block, no P2P (see the module doc)."""
    import torch.distributed as dist

    from omni_backend.parallel.sp_attention import ring_attention

    if dist.is_initialized():
        return Row("ring.ring_attention_1_rank", None, note="torch.distributed is already initialised here")
    backend = "nccl" if bench.cuda else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                            **({"device_id": bench.device} if bench.cuda else {}))
    try:
        with torch.inference_mode():
            torch.manual_seed(0)
            q, k, v, mask = joint_qkv(bench, masked=True)
            group = dist.group.WORLD
            reference = native_attention(q, k, v, mask)
            out = ring_attention(q, k, v, mask, None, group)
            diff = max_abs(out, reference)
            ratio = bench.ratio(lambda: ring_attention(q, k, v, mask, None, group),
                                lambda: native_attention(q, k, v, mask))
    finally:
        dist.destroy_process_group()
    return Row("ring.ring_attention_1_rank", within(diff, reference, ATTENTION_RTOL), diff, ratio,
               f"ring_attention on a {backend} group of one rank (two ranks need two GPUs), text padding masked, "
               f"vs native SDPA; ok: max abs diff <= {ATTENTION_RTOL:g} x max |native|")


# ---- attention backends through diffusers' dispatcher ------------------------------------------------
def check_attention(bench: Bench, names: list[str]):
    for name in names:
        yield f"attention.{name}", lambda name=name: attention_row(bench, name)


@torch.inference_mode()
def attention_row(bench: Bench, name: str) -> Row:
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _AttentionBackendRegistry,
        _check_attention_backend_requirements,
        dispatch_attention_fn,
    )

    check = f"attention.{name}"
    cuda_only, rtol = ATTENTION_BACKENDS.get(name, (True, HUB_TOLERANCE))
    backend = AttentionBackendName(name)
    if cuda_only and not bench.cuda:
        return Row(check, None, note="CUDA-only backend: not run on the CPU")
    try:
        _check_attention_backend_requirements(backend)
    except RuntimeError as error:
        return Row(check, None, note=f"not available: {error}")
    torch.manual_seed(0)
    q, k, v, _mask = joint_qkv(bench, masked=False)
    try:
        for constraint in _AttentionBackendRegistry._constraints.get(backend, []):
            constraint(query=q, key=k, value=v, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None)
    except ValueError as error:
        return Row(check, None, note=f"diffusers' checks refuse it here: {error}")
    reference = native_attention(q, k, v, None)
    try:
        out = dispatch_attention_fn(q, k, v, backend=backend)
    except RuntimeError as error:
        if "No available kernel" not in str(error):
            raise
        # torch's SDPA backends (_native_flash, _native_efficient, _native_cudnn) on a GPU that kernel skips
        return Row(check, None, note=f"torch has no such kernel for these inputs on this GPU: {error}")
    diff = max_abs(out, reference)
    ratio = bench.ratio(lambda: dispatch_attention_fn(q, k, v, backend=backend),
                        lambda: native_attention(q, k, v, None))
    flex = "; diffusers calls flex uncompiled, which builds the score matrix" if name == "flex" else ""
    return Row(check, within(diff, reference, rtol), diff, ratio,
               f"dispatch_attention_fn(backend={name!r}) vs 'native' on {tuple(q.shape)} {str(bench.dtype)[6:]}, "
               f"no mask{flex}; ok: max abs diff <= {rtol:g} x max |native|")


# ---- FP8 ---------------------------------------------------------------------------------------------
def check_fp8(bench: Bench):
    yield "fp8.weight_only", lambda: fp8_row(bench, w8a8=False)
    yield "fp8.w8a8", lambda: fp8_row(bench, w8a8=True)


def fp8_row(bench: Bench, w8a8: bool) -> Row:
    import torch.nn.functional as F

    from omni_backend.memory.fp8 import FP8Linear, w8a8_supported

    check = "fp8.w8a8" if w8a8 else "fp8.weight_only"
    if w8a8:
        supported, reason = w8a8_supported(bench.device, bench.dtype)
        if not supported:
            return Row(check, None, note=f"w8a8_supported: {reason}")
    torch.manual_seed(0)
    in_features, out_features = bench.shapes.linear
    with torch.no_grad():
        linear = torch.nn.Linear(in_features, out_features, device=bench.device).to(bench.dtype)
        layer = FP8Linear.from_linear(linear, use_scaled_mm=w8a8)
    if layer.use_scaled_mm != w8a8:
        return Row(check, False, note=f"FP8Linear.use_scaled_mm is {layer.use_scaled_mm}")
    x = bench.randn(bench.shapes.tokens, in_features)
    with torch.inference_mode():
        reference = F.linear(x, linear.weight, linear.bias)
        out = layer(x)
        diff = max_abs(out, reference)
        relative_rms = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
        ratio = bench.ratio(lambda: layer(x), lambda: F.linear(x, linear.weight, linear.bias))
    how = "torch._scaled_mm, activations per token" if w8a8 else "dequantized per call"
    return Row(check, within(diff, reference, FP8_RTOL), diff, ratio,
               f"FP8Linear ({how}) {in_features} -> {out_features} on {x.shape[0]} tokens vs bf16 F.linear; "
               f"relative RMS error {relative_rms:.3g}; ok: max abs diff <= {FP8_RTOL:g} x max |bf16|")


# ---- a real-shape DiT (compile, offload) -------------------------------------------------------------
def build_dit(bench: Bench, layers: int):
    """A Qwen-Image DiT of `layers` blocks at the shapes' config, random weights, on the device in bf16.
    Built a block at a time (each initialised in float32, then cast), so the peak is one float32 block."""
    from diffusers.models.transformers.transformer_qwenimage import (
        QwenImageTransformer2DModel,
        QwenImageTransformerBlock,
    )

    torch.manual_seed(0)
    with torch.no_grad(), torch.device(bench.device):
        model = QwenImageTransformer2DModel(**bench.shapes.dit, num_layers=0).to(bench.dtype)
        blocks = [QwenImageTransformerBlock(dim=model.inner_dim, num_attention_heads=bench.shapes.heads,
                                            attention_head_dim=bench.shapes.head_dim).to(bench.dtype)
                  for _ in range(layers)]
    model.transformer_blocks = torch.nn.ModuleList(blocks)
    model.register_to_config(num_layers=layers)
    return model.eval()


def dit_inputs(bench: Bench) -> dict:
    s = bench.shapes
    h, w = s.image_hw
    return {"hidden_states": bench.randn(1, h * w, s.dit["in_channels"]),
            "encoder_hidden_states": bench.randn(1, s.text_tokens, s.dit["joint_attention_dim"]),
            "encoder_hidden_states_mask": None,
            "timestep": torch.tensor([0.5], device=bench.device, dtype=bench.dtype),
            "img_shapes": [(1, h, w)], "return_dict": False}


def dit_forward(model, inputs):
    @torch.inference_mode()
    def forward():
        return model(**inputs)[0]

    return forward


def compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["frames"].values())


def check_compile(bench: Bench, backend: str):
    yield f"compile.{backend}", lambda: compile_row(bench, backend)


def compile_row(bench: Bench, backend: str) -> Row:
    from omni_backend.compile import CompileConfig
    from omni_backend.families import FAMILIES
    from omni_backend.run.sampling import RunReport

    family = FAMILIES["qwen-image"]
    model = build_dit(bench, bench.shapes.compile_blocks)
    inputs = dit_inputs(bench)
    forward = dit_forward(model, inputs)
    eager_out = forward()
    eager = bench.seconds({"eager": forward})["eager"]
    pipe = SimpleNamespace(transformer=model)
    ctx = SimpleNamespace(pipe=pipe, spec=SimpleNamespace(device=str(bench.device), family=family), family=family,
                          report=RunReport())
    with CompileConfig(backend).run_session(ctx):
        bench.sync()
        start = time.perf_counter()
        out = forward()
        bench.sync()
        first = time.perf_counter() - start
        before = compiled_frames()
        warm = bench.seconds({"compiled": forward})["compiled"]  # after one more warm-up call
        recompiles = compiled_frames() - before
    diff = max_abs(out, eager_out)
    blocks = ctx.report.sections.get("Compile", {}).get("blocks")
    ok = within(diff, eager_out, COMPILE_RTOL) and recompiles == 0 and blocks == bench.shapes.compile_blocks
    del model, pipe, ctx
    bench.free()
    return Row(f"compile.{backend}", ok, diff, warm / eager,
               f"CompileConfig({backend!r}).run_session on a {bench.shapes.compile_blocks}-block Qwen-Image DiT "
               f"({blocks} blocks compiled), {inputs['hidden_states'].shape[1]} image + {bench.shapes.text_tokens} "
               f"text tokens; first compiled call {first:.1f} s (eager {eager:.3f} s); {recompiles} Dynamo frames "
               f"compiled in the warm calls; ok: max abs diff <= {COMPILE_RTOL:g} x max |eager|, no recompile")


def check_offload(bench: Bench, window: int):
    yield "offload.layerwise", lambda: offload_row(bench, window)


def offload_row(bench: Bench, window: int) -> Row:
    from omni_backend.families import FAMILIES
    from omni_backend.memory.layerwise_offload import install_layerwise_offload

    blocks = bench.shapes.offload_blocks
    model = build_dit(bench, blocks)
    inputs = dit_inputs(bench)
    forward = dit_forward(model, inputs)
    resident_out, resident_peak = peak_of(bench, forward)
    resident = bench.seconds({"resident": forward})["resident"]
    pipe = SimpleNamespace(transformer=model, components={"transformer": model})
    windows = install_layerwise_offload(FAMILIES["qwen-image"], pipe, window, bench.device)
    try:
        offloaded_out, offloaded_peak = peak_of(bench, forward)
        offloaded = bench.seconds({"offloaded": forward})["offloaded"]
        again = forward()  # a second call starts from the wrapped window (blocks 0 .. W-1 prefetched)
    finally:
        for block_window in windows:
            block_window.uninstall()
    diff = max(max_abs(offloaded_out, resident_out), max_abs(again, resident_out))
    exact = torch.equal(offloaded_out, resident_out) and torch.equal(again, resident_out)
    memory = (f"; peak CUDA memory of a forward {offloaded_peak / 2**30:.2f} GiB offloaded vs "
              f"{resident_peak / 2**30:.2f} GiB resident") if bench.cuda else "; CPU: the zero-copy window"
    del model, pipe, windows
    bench.free()
    return Row("offload.layerwise", exact, diff, offloaded / resident,
               f"install_layerwise_offload, {window} of {blocks} Qwen-Image blocks on the device, vs the same "
               f"blocks resident (timed one after the other, not alternated){memory}; ok: exactly equal")


def peak_of(bench: Bench, forward):
    if bench.cuda:
        bench.sync()
        torch.cuda.reset_peak_memory_stats(bench.device)
    out = forward()
    bench.sync()
    return out, torch.cuda.max_memory_allocated(bench.device) if bench.cuda else 0


# ---- running and printing ----------------------------------------------------------------------------
def run_checks(bench: Bench, args) -> list[Row]:
    plans = {
        "ring": lambda: check_ring(bench, args.ring_degree),
        "attention": lambda: check_attention(bench, args.attention_backends),
        "fp8": lambda: check_fp8(bench),
        "compile": lambda: check_compile(bench, args.compile_backend),
        "offload": lambda: check_offload(bench, args.window),
    }
    rows = []
    for name in args.checks:
        for check, run in plans[name]():
            try:
                row = run()
            except Exception as error:  # noqa: BLE001 - a failing check is a row; the others still run
                row = Row(check, False, note=f"{type(error).__name__}: {error}".strip()[:500])
                bench.free()
            rows.append(row)
            if args.json:
                print(json.dumps(row.as_dict()), flush=True)
            else:
                print_row(row)
    return rows


def print_row(row: Row) -> None:
    data = row.as_dict()
    ok = {True: "ok", False: "FAIL", None: "skip"}[row.ok]
    diff = "-" if data["max_abs_diff"] is None else f"{data['max_abs_diff']:.3g}"
    ratio = "-" if data["time_ratio"] is None else f"{data['time_ratio']:.3f}"
    print(f"{row.check:<44} {ok:<5} {diff:>12} {ratio:>10}  {row.note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON line per row")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N; cpu (with --small) for development")
    parser.add_argument("--small", action="store_true", help="small shapes (development without a GPU)")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    parser.add_argument("--attention-backends", default=",".join(ATTENTION_BACKENDS),
                        help="diffusers backend names to compare with 'native'")
    parser.add_argument("--compile-backend", default=None,
                        help="inductor (default), or aot_eager (the default with --device cpu)")
    parser.add_argument("--ring-degree", type=int, default=4, help="ring shards (ranks) run one after another")
    parser.add_argument("--window", type=int, default=2, help="layerwise offload: blocks on the device")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per path (medians)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"check": "cuda", "ok": None, "max_abs_diff": None, "time_ratio": None, "note": NO_CUDA})
              if args.json else NO_CUDA)
        return
    args.checks = [name.strip() for name in args.checks.split(",") if name.strip()]
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}: choose from {', '.join(CHECKS)}")
    args.attention_backends = [name.strip() for name in args.attention_backends.split(",") if name.strip()]
    args.compile_backend = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")

    from _common import ROOT  # noqa: F401  (offline mode and the pack on sys.path; after the CUDA check: slow)

    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)  # NCCL's group of one rank names its device by index
    bench = Bench(device, SMALL if args.small else real_shapes(), args.repeats)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if not args.json:
        print(f"gpu_check on {where}, {bench.shapes.label}, bf16, medians of {args.repeats}")
        print(f"{'check':<44} {'ok':<5} {'max_abs_diff':>12} {'time_ratio':>10}  note")
    rows = run_checks(bench, args)
    sys.exit(1 if any(row.ok is False for row in rows) else 0)


if __name__ == "__main__":
    main()
