"""FP8 linear layers: e4m3 weight storage with one scale per output channel.

weight-only: the weight is dequantized on the fly (fp8 x scale, in float32, cast to the layer's
compute dtype) and multiplied in high precision. Works on every device; halves (bf16) or quarters
(fp32) the layer's weight bytes.

w8a8: activations are also quantized to e4m3, with a dynamic scale per token (row), and both go
through `torch._scaled_mm` with row-wise scales. Only on CUDA GPUs with FP8 tensor cores (sm89+,
bf16 output, dimensions that are multiples of 16); anywhere else a layer runs weight-only and the
run report says so. `torch._scaled_mm` also exists on the CPU but is extremely slow (about 13 s
for 256x1024x1024 measured on this project's CPUs), so it is used there only by the small-shape numerics
test, through the same `w8a8_linear` function the GPU path runs.

Why not torchao: `Float8WeightOnlyConfig` does work on this CPU (torchao 0.18, and for fp32 its
per-row scales and e4m3 data are bit-identical to `quantize_per_channel` here), but its weights are
tensor subclasses: they cannot be swapped with `param.data = ...` (diffusers' group offloading
carries torchao-specific branches for exactly that), which our offload relies on, and their pinning
and async copies cannot be tested without a GPU. Its dynamic-activation config refuses the CPU
outright ("requires CUDA compute capability >= 8.9"), and it would add a dependency tied to the
torch version into users' ComfyUI environments. The math is the twenty lines below.

LoRA contract (peft, as diffusers' `load_lora_weights` uses it):
- `FP8Linear` is an `nn.Linear`, so peft's default dispatch wraps it in `lora.Linear` and calls it
  as the base layer; it keeps `in_features`/`out_features`.
- peft moves new adapter weights to the base layer's dtype unless the layer has `compute_dtype`
  (`_get_base_layer_device_and_dtype`). `FP8Linear.compute_dtype` is the model's dtype, so adapters
  created after quantization stay in high precision. Layers wrapped before quantization are
  quantized through their `base_layer`; the adapters (`lora_A`/`lora_B`) are never touched.
- Fusing an adapter into an FP8 weight (`fuse_lora`, peft `merge`) is not supported: fp8 has no
  arithmetic. Apply LoRA unfused (per-run strengths need that anyway).
- With layerwise or model offload, adapter weights added after loading are not part of the offloaded
  units: they stay resident (they are small) and are never replaced by placeholders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
_MIN_SCALE = 1e-12  # an all-zero row or token gets a tiny scale instead of 0/0


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] weight -> (e4m3 [out, in], float32 scale [out, 1]) with weight ~= fp8 * scale.

    A weight whose values are all e4m3 numbers already (read from a ComfyUI fp8_e4m3fn file and upcast)
    keeps exactly those values with scale 1: rescaling them per row would round them a second time."""
    high = weight.detach().float()
    as_fp8 = high.to(E4M3)
    if torch.equal(as_fp8.float(), high):
        return as_fp8, torch.ones(high.shape[0], 1, device=high.device)
    scale = (high.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=_MIN_SCALE)
    return (high / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[tokens, features] activations -> (e4m3, float32 scale [tokens, 1]): one scale per token."""
    high = x.float()
    scale = (high.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=_MIN_SCALE)
    return (high / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def w8a8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                out_dtype: torch.dtype) -> torch.Tensor:
    """y = x @ W^T + b with x quantized per token and W per channel, multiplied by torch._scaled_mm."""
    leading = x.shape[:-1]
    x_fp8, x_scale = quantize_per_token(x.reshape(-1, x.shape[-1]))
    # _scaled_mm wants mat2 column-major: W is [out, in] row-major, so W.t() is.
    out = torch._scaled_mm(x_fp8, weight.t(), scale_a=x_scale, scale_b=weight_scale.t(), out_dtype=out_dtype)
    if bias is not None:
        out = out + bias.to(out_dtype)
    return out.reshape(*leading, out.shape[-1])


def w8a8_supported(device: torch.device | str, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether the fast w8a8 path can run here, and if not, why (for the run report)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"the {device.type.upper()} has no fast FP8 matmul"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return False, f"{torch.cuda.get_device_name(device)} (sm{major}{minor}) has no FP8 tensor cores (needs sm89+)"
    if dtype != torch.bfloat16:
        return False, f"row-wise scaled FP8 matmul outputs bf16 only and the model runs in {dtype}"
    return True, ""


class FP8Linear(torch.nn.Linear):
    """An nn.Linear whose weight is stored in e4m3 with a per-output-channel scale (see module doc)."""

    def __init__(self, source: torch.nn.Linear, use_scaled_mm: bool = False):
        torch.nn.Module.__init__(self)  # nn.Linear.__init__ would allocate a full-precision weight
        self.in_features = source.in_features
        self.out_features = source.out_features
        self.compute_dtype = source.weight.dtype
        weight, scale = quantize_per_channel(source.weight)
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        # A parameter, not a buffer, so offload moves it together with the weight it scales.
        self.weight_scale = torch.nn.Parameter(scale.to(weight.device), requires_grad=False)
        self.register_parameter("bias", source.bias)  # kept in full precision (or None)
        # _scaled_mm needs both matrix dimensions to be multiples of 16.
        self.use_scaled_mm = bool(use_scaled_mm and self.in_features % 16 == 0 and self.out_features % 16 == 0)

    @classmethod
    def from_linear(cls, source: torch.nn.Linear, use_scaled_mm: bool = False) -> "FP8Linear":
        return cls(source, use_scaled_mm)

    @classmethod
    def empty_like(cls, source: torch.nn.Linear, compute_dtype: torch.dtype) -> "FP8Linear":
        """An FP8Linear of `source`'s shape on the meta device, for `load_state_dict(assign=True)` to fill
        with FP8 weights as a file stores them and their float32 [out, 1] `weight_scale`
        (single_file/stored_fp8.py). Weight-only: a file's e5m2 weights have no fast matmul."""
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.in_features, layer.out_features = source.in_features, source.out_features
        layer.compute_dtype = compute_dtype
        layer.weight = torch.nn.Parameter(torch.empty(source.out_features, source.in_features, dtype=E4M3,
                                                      device="meta"), requires_grad=False)
        layer.weight_scale = torch.nn.Parameter(torch.empty(source.out_features, 1, device="meta"),
                                                requires_grad=False)
        layer.register_parameter("bias", source.bias)
        layer.use_scaled_mm = False
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale).to(self.compute_dtype)

    def dequantized_linear(self) -> torch.nn.Linear:
        """A plain nn.Linear with this layer's weights in its compute dtype (for code that cuts weights,
        e.g. tensor parallelism, which would otherwise cut the FP8 values without their scales)."""
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = torch.nn.Parameter(self.dequantized_weight(), requires_grad=False)
        linear.bias = self.bias
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_scaled_mm:
            return w8a8_linear(x, self.weight, self.weight_scale, self.bias, self.compute_dtype)
        return F.linear(x, self.dequantized_weight(), self.bias)

    def weight_nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size() + self.weight_scale.numel() * 4

    def extra_repr(self) -> str:
        mode = "w8a8" if self.use_scaled_mm else "weight-only"
        return f"{super().extra_repr()}, fp8=e4m3 {mode}, compute_dtype={self.compute_dtype}"
