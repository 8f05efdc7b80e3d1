"""Tensor parallelism: shard a DiT's attention and MLP linears across the ranks of a TP group.

The plans are diffusers' own `_tp_plan` (Qwen-Image, FLUX.1, FLUX.2) or the family's (Z-Image,
Wan), in the same format: module-path globs -> "colwise" | "rowwise" | Packed*Parallel. diffusers
applies them with DTensor and refuses CPU devices; we apply the same plans with two small
Linear subclasses that hold only their shard and talk through plain torch.distributed, so the
CPU (gloo) path tests exactly the plan a GPU runs.

Beyond diffusers' plans (attention and MLP linears), each family's `tensor_parallel_extras` shard
what else is large and would otherwise sit whole on every rank: the modulation linears (Qwen-Image's
img_mod/txt_mod, 3072 -> 18432, are a third of a block's weights; FLUX's AdaLN `norm1.linear`,
Z-Image's `adaLN_modulation`, Wan's `time_proj`) column-parallel with the output gathered
(GATHERED_COLWISE): the modulation vector is one row per sample, so the gather costs next to nothing.
The timestep/text embedding MLPs are a colwise + rowwise pair like any MLP. Norms, the patch embedding
and the token-wise input projections stay replicated (small, and sharding them would gather
activations of the whole sequence at the model's width).

- ColumnParallelLinear keeps a block of output rows (a subset of heads / MLP features) and needs
  no communication; its output feeds a row-parallel layer or the attention of its heads.
- RowParallelLinear keeps the matching block of input columns; the partial products are summed
  with an all-reduce and the (replicated) bias is added once.
- GatheredColumnLinear keeps a block of output rows like ColumnParallelLinear and all-gathers its
  output, so what follows sees the whole vector (torch's ColwiseParallel(output_layouts=Replicate())).
Packed layers (SwiGLU gate+up, FLUX.2's fused QKV+MLP) shard each packed block separately.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.hooks.tensor_parallel import PackedColwiseParallel, PackedRowwiseParallel

from ..families.base import GATHERED_COLWISE
from ..memory.fp8 import FP8Linear


def _block_sizes(total: int, blocks) -> list[int]:
    if blocks is None:
        return [total]
    if sum(blocks) == total:
        return list(blocks)
    unit = total // sum(blocks)  # relative sizes, e.g. [1, 1] for gate/up halves
    return [b * unit for b in blocks]


def _local_blocks(tensor: torch.Tensor, dim: int, sizes: list[int], rank: int, world: int) -> torch.Tensor:
    pieces = []
    for chunk in tensor.split(sizes, dim=dim):
        if chunk.shape[dim] % world:
            raise ValueError(f"a packed block of {chunk.shape[dim]} does not split over {world} ranks")
        pieces.append(chunk.chunk(world, dim=dim)[rank])
    return torch.cat(pieces, dim=dim).contiguous()


class _Shard:
    """Where a sharded linear's piece sits: rank, world and the packed block sizes it was cut by."""

    def _record(self, group, sizes):
        self.group = group
        self.shard_rank, self.shard_world, self.shard_sizes = dist.get_rank(group), dist.get_world_size(group), sizes

    def cut(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """Cut a full tensor along `dim` the way this layer's weight was cut (for LoRA factors)."""
        return _local_blocks(tensor, dim, self.shard_sizes, self.shard_rank, self.shard_world)

    def local_delta(self, delta: torch.Tensor) -> torch.Tensor:
        """A LoRA's weight delta as this shard's piece (for fusing). Column and row shards get factors
        already cut like their weight (see shard_lora_factors), so their delta fits as it is."""
        return delta


def _rows_of(cls, linear: torch.nn.Linear, group, sizes: list[int]):
    """A `cls` shard holding this rank's rows (output features) of `linear`, cut block by block."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    weight = _local_blocks(linear.weight.data, 0, sizes, rank, world)
    shard = cls(linear.in_features, weight.shape[0], bias=linear.bias is not None, device="meta")
    shard.weight = torch.nn.Parameter(weight, requires_grad=False)
    if linear.bias is not None:
        shard.bias = torch.nn.Parameter(_local_blocks(linear.bias.data, 0, sizes, rank, world), requires_grad=False)
    shard.full_in_features, shard.full_out_features = linear.in_features, linear.out_features
    shard._record(group, sizes)
    return shard


class ColumnParallelLinear(torch.nn.Linear, _Shard):
    """y_local = x W_local^T + b_local: this rank's rows of the output features."""

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, group, blocks=None) -> ColumnParallelLinear:
        return _rows_of(cls, linear, group, _block_sizes(linear.out_features, blocks))


class GatheredColumnLinear(torch.nn.Linear, _Shard):
    """y = all_gather(x W_local^T + b_local): the rank computes its rows of the output and every rank
    receives the whole output. `out_features` is the whole width (what the layer returns), so a LoRA
    wrapping it gets whole factors and adds its delta to the gathered output (nothing to cut)."""

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, group) -> GatheredColumnLinear:
        shard = _rows_of(cls, linear, group, [linear.out_features])
        shard.out_features = linear.out_features
        return shard

    def local_delta(self, delta: torch.Tensor) -> torch.Tensor:
        return self.cut(delta, 0)  # whole factors: the delta is whole, the weight holds this rank's rows

    def forward(self, x):
        local = F.linear(x, self.weight, self.bias).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.shard_world)]
        dist.all_gather(parts, local, group=self.group)
        return torch.cat(parts, dim=-1)


class RowParallelLinear(torch.nn.Linear, _Shard):
    """y = all_reduce(x_local W_local^T) + b: the input features arrive sharded.

    When a LoRA wraps this layer, the wrapper adds its own partial product (lora_A is cut by
    input columns too), so during the wrapper's call the reduction moves to the wrapper's output:
    see `reduce_after_lora`.
    """

    reduce_output = True  # False only while a LoRA wrapper around this layer is running

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, group, blocks=None) -> RowParallelLinear:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        sizes = _block_sizes(linear.in_features, blocks)
        weight = _local_blocks(linear.weight.data, 1, sizes, rank, world)
        shard = cls(weight.shape[1], linear.out_features, bias=linear.bias is not None, device="meta")
        shard.weight = torch.nn.Parameter(weight, requires_grad=False)
        if linear.bias is not None:
            shard.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        shard.full_in_features, shard.full_out_features = linear.in_features, linear.out_features
        shard._record(group, sizes)
        return shard

    def forward(self, x):
        partial = F.linear(x, self.weight)
        if not self.reduce_output:
            return partial  # the LoRA wrapper around us reduces (and adds the bias)
        return self.finish(partial)

    def finish(self, partial):
        dist.all_reduce(partial, group=self.group)
        return partial if self.bias is None else partial + self.bias


class ShardedRMSNorm(torch.nn.Module):
    """RMSNorm over a feature vector whose features are spread over the TP ranks (Wan's QK norm
    spans all heads): the mean square is all-reduced so every rank normalises like one device."""

    def __init__(self, norm: torch.nn.RMSNorm, group):
        super().__init__()
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        self.group, self.world = group, world
        self.eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
        self.full_features = norm.normalized_shape[-1]
        self.weight = torch.nn.Parameter(norm.weight.data.chunk(world)[rank].clone(), requires_grad=False) \
            if norm.weight is not None else None

    def forward(self, x):
        squares = x.float().pow(2).sum(dim=-1, keepdim=True)
        dist.all_reduce(squares, group=self.group)
        normed = (x.float() * torch.rsqrt(squares / self.full_features + self.eps)).to(x.dtype)
        return normed * self.weight if self.weight is not None else normed


def module_glob(glob: str):
    """A plan key ("blocks.*.attn1.to_q") as a regex over module names; * is one path component."""
    return re.compile("^" + re.escape(glob).replace(r"\*", r"[^.]+") + "$")


def apply_tensor_parallel(model: torch.nn.Module, plan: dict, group) -> int:
    """Replace every linear the plan names with its shard; returns how many were sharded."""
    compiled = [(module_glob(path), style) for path, style in plan.items()]
    targets = []
    for name, module in model.named_modules():
        for pattern, style in compiled:
            if pattern.match(name):
                if not isinstance(module, torch.nn.Linear):
                    raise TypeError(f"tensor-parallel plan names {name}, a {type(module).__name__}, not a Linear")
                targets.append((name, module, style))
                break
    for name, module, style in targets:
        _replace(model, name, _shard(module, style, group))
    return len(targets)


def _shard(linear, style, group):
    if isinstance(linear, FP8Linear):  # a file's FP8 weights: cut in the compute dtype, as before they were kept
        linear = linear.dequantized_linear()
    if style == GATHERED_COLWISE:
        return GatheredColumnLinear.from_linear(linear, group)
    if style == "colwise":
        return ColumnParallelLinear.from_linear(linear, group)
    if style == "rowwise":
        return RowParallelLinear.from_linear(linear, group)
    if isinstance(style, PackedColwiseParallel):
        blocks = style.blocks if getattr(style, "blocks", None) else getattr(linear, "_tp_packed_col_blocks", None)
        return ColumnParallelLinear.from_linear(linear, group, blocks)
    if isinstance(style, PackedRowwiseParallel):
        blocks = style.blocks if getattr(style, "blocks", None) else getattr(linear, "_tp_packed_row_blocks", None)
        return RowParallelLinear.from_linear(linear, group, blocks)
    raise ValueError(f"unsupported tensor-parallel style {style!r}")


def _replace(model, name: str, new_module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new_module)


# ---- LoRA on sharded layers -----------------------------------------------------------------
def is_tensor_parallel(model: torch.nn.Module) -> bool:
    return any(isinstance(m, _Shard) for m in model.modules())


def shard_lora_factors(models_by_prefix: dict, state_dict: dict) -> dict:
    """Cut a LoRA's factors like the layers they adapt: lora_B by output rows on column-parallel
    layers, lora_A by input columns on row-parallel ones (packed blocks cut per block).

    `models_by_prefix` maps the file's key prefix to the model its keys load into: Wan2.2's second
    expert (`transformer_2`) is filled from the file's `transformer.` keys, so the prefix alone does
    not say which model's layers to cut by."""
    sharded = {}
    for key, tensor in state_dict.items():
        layer, part = _sharded_layer_for(models_by_prefix, key)
        if isinstance(layer, ColumnParallelLinear) and part == "B":
            tensor = layer.cut(tensor, 0)
        elif isinstance(layer, RowParallelLinear) and part == "A":
            tensor = layer.cut(tensor, 1)
        sharded[key] = tensor  # GatheredColumnLinear returns whole outputs: its factors stay whole
    return sharded


def _sharded_layer_for(models_by_prefix: dict, key: str):
    match = re.match(r"^(?P<prefix>[^.]+)\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$", key)
    if match is None:
        return None, None
    model = models_by_prefix.get(match["prefix"])
    if model is None:
        return None, None
    try:
        layer = model.get_submodule(match["module"])
    except AttributeError:
        return None, None
    layer = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    return layer, match["part"]


_REDUCES_ROW_SHARD = "_omni_reduces_row_shard"


def reduce_after_lora(model: torch.nn.Module) -> None:
    """Move each LoRA-wrapped row-parallel layer's reduction to the wrapper's output, for the span of
    the wrapper's call only: outside it the layer reduces by itself. So when the last adapter is
    deleted and peft puts the plain layer back, that layer is whole again with nothing to undo, and a
    wrapper that survives one adapter's deletion keeps its hooks (registered once per wrapper)."""
    for module in model.modules():
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else None
        if isinstance(base, RowParallelLinear) and not getattr(module, _REDUCES_ROW_SHARD, False):
            module.register_forward_pre_hook(lambda _m, _inputs, base=base: setattr(base, "reduce_output", False))
            # No always_call: reducing while an exception unwinds would start a collective the other
            # ranks may never join. Nothing raises inside a block on purpose (several ranks stop only
            # at step boundaries), and any other failure ends the worker with its sharded model.
            module.register_forward_hook(lambda _m, _inputs, output, base=base: _reduce_wrapped(base, output))
            setattr(module, _REDUCES_ROW_SHARD, True)


def _reduce_wrapped(base: RowParallelLinear, output):
    base.reduce_output = True
    return base.finish(output)


def divide_attention_heads(model: torch.nn.Module, world: int) -> None:
    """Attention modules whose processors reshape by `attn.heads` must see their local head count."""
    for module in model.modules():
        sharded = any(isinstance(child, ColumnParallelLinear) for child in module.children())
        if sharded and isinstance(getattr(module, "heads", None), int):
            module.heads //= world


def finish_tensor_parallel(model: torch.nn.Module, family, group) -> None:
    """What the family declares beyond its plan's linears: sharded norms and local head counts."""
    for pattern in map(module_glob, family.tensor_parallel_sharded_norms):
        for name, norm in list(model.named_modules()):
            if pattern.match(name) and isinstance(norm, torch.nn.RMSNorm):
                _replace(model, name, ShardedRMSNorm(norm, group))
    if family.tensor_parallel_divides_heads:
        divide_attention_heads(model, dist.get_world_size(group))
