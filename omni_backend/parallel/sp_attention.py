"""Sequence-parallel attention: Ulysses (all-to-all over heads), Ring (P2P K/V rotation with a
log-sum-exp merge) and both at once, for sequence shards of any length.

Why our own: diffusers' "ring" all-gathers every K/V chunk first (so each rank holds the whole
sequence's K/V, which is what ring attention exists to avoid), its native backend cannot return
the log-sum-exp on CPU, and it needs equal shards (Qwen-Image's text length is whatever the
prompt tokenises to). We keep diffusers' `_cp_plan` hooks for splitting and gathering the
sequence; only the attention op is ours.

Kernels: Ulysses alone needs no log-sum-exp, so after its all-to-all each rank calls diffusers'
dispatcher on the backend the model asked for (flash, sage, ... or torch SDPA), like one process would.
Ring (and Ring inside Ulysses) merges partial results by their log-sum-exp: on CUDA torch's fused flash
or memory-efficient kernels return it without building the score matrix; on the CPU, torch's CPU flash
kernel (exact).

Tensors are in diffusers' dispatch layout: (batch, sequence, heads, head_dim). Masks are key
padding masks: (batch, keys) or (batch, 1, 1, keys), boolean (True = attend).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


# ---- local attention that also returns the log-sum-exp ------------------------------------------
def local_attention(query, key, value, mask=None, scale=None):
    """(out [B,S,H,D], lse [B,H,S] float32) for one block of keys.

    CPU: torch's flash kernel for the CPU (exact, what SDPA itself runs there). CUDA: torch's fused
    flash or memory-efficient kernel, which return the log-sum-exp without building the score matrix
    (`fused_attention_with_lse`). Other devices: the same math written out.
    """
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # B, H, S, D
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=_additive_mask(mask, q.dtype), scale=scale)
    elif q.device.type == "cuda" and (kernel := fused_kernel_for(q, k, v, mask)) is not None:
        out, lse = fused_attention_with_lse(q, k, v, mask, scale, kernel)
    else:
        out, lse = _math_attention(q, k, v, _additive_mask(mask, q.dtype), scale)
    lse = lse.float()
    if mask is not None:
        # A sample with no key to attend to in this block must weigh nothing in the merge: the CPU
        # kernel returns out = 0 with lse = 0 there (not -inf), which would scale the other blocks down.
        lse = lse.masked_fill(~mask.any(dim=-1)[:, None, None], float("-inf"))
    return out.transpose(1, 2), lse


def _additive_mask(mask, dtype):
    """Key padding mask [B, K] (True = attend) -> additive [B, 1, 1, K] (0 or -inf)."""
    if mask is None:
        return None
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return additive[:, None, None, :]


# CUDA only. NOT RUN HERE: this project has no GPU. What was checked without one: the ops' argument
# order and output layout against torch's meta kernels (the shapes the CUDA kernels return, e.g. the
# memory-efficient kernel pads its log-sum-exp to a multiple of 32 queries), and the bias against the
# alignment rule torch's SDPA front end applies before that kernel (tests/parallel/test_sp_attention.py). Not
# checked: that the kernels' log-sum-exp (natural log, of the scaled scores) merges to the exact result,
# which the CPU path proves for its own kernel only, and the kernels' eligibility rules on real GPUs.
def fused_kernel_for(q, k, v, mask) -> str | None:
    """"flash" (no mask, fp16/bf16), "efficient" (masks, fp32) or None, by torch's own eligibility checks."""
    from torch.backends.cuda import can_use_efficient_attention, can_use_flash_attention
    from torch.nn.attention import SDPAParams

    if mask is None and can_use_flash_attention(SDPAParams(q, k, v, None, 0.0, False, False)):
        return "flash"
    bias = None if mask is None else _aligned_bias(mask, q, k)
    if can_use_efficient_attention(SDPAParams(q, k, v, bias, 0.0, False, False)):
        return "efficient"
    return None


def fused_attention_with_lse(q, k, v, mask, scale, kernel: str):
    """q, k, v [B, H, S, D] -> (out [B, H, Sq, D], lse [B, H, Sq] float32) from torch's fused kernels."""
    if kernel == "flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    else:
        bias = None if mask is None else _aligned_bias(mask, q, k)
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, False,
                                                                          scale=scale)[:2]
    return out, lse[..., :q.shape[2]]  # the memory-efficient kernel pads lse to a multiple of 32 queries


def _aligned_bias(mask, q, k):
    """The key padding mask as the additive bias the memory-efficient kernel reads: [B, H, Sq, K]
    broadcast (no copy per head or query) from rows whose stride is a multiple of 16 elements, which
    torch's SDPA front end also ensures (`preprocess_mask`) and the kernel requires."""
    batch, keys = mask.shape
    padded = -(-keys // 16) * 16
    bias = torch.zeros(batch, 1, 1, padded, dtype=q.dtype, device=q.device)
    bias[..., :keys].masked_fill_(~mask[:, None, None, :], float("-inf"))
    return bias[..., :keys].expand(batch, q.shape[1], q.shape[2], keys)


def _math_attention(q, k, v, additive, scale):
    # Portable fallback (devices with neither kernel): the same math as SDPA, keeping the log-sum-exp.
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if additive is not None:
        scores = scores + additive.float()
    lse = torch.logsumexp(scores, dim=-1)
    out = (torch.exp(scores - lse.unsqueeze(-1)) @ v.float()).to(q.dtype)
    return out, lse


def merge(out, lse, block_out, block_lse):
    """Combine two partial attention results over disjoint key sets.

    A block whose keys are all masked for some query has lse = -inf (and maybe NaN outputs):
    it must contribute nothing, so weights go through logaddexp and NaNs become zero weight.
    """
    block_out = torch.nan_to_num(block_out.float())
    if out is None:
        return block_out, block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    keep = torch.nan_to_num(torch.exp(lse - new_lse)).transpose(1, 2).unsqueeze(-1)  # B, S, H, 1
    take = torch.nan_to_num(torch.exp(block_lse - new_lse)).transpose(1, 2).unsqueeze(-1)
    return out * keep + block_out * take, new_lse


# ---- mask normalisation ------------------------------------------------------------------------
def key_padding_mask(mask, batch: int, keys: int):
    if mask is None:
        return None
    if mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        mask = mask[:, 0, 0, :]
    if mask.ndim != 2 or mask.shape[-1] != keys:
        raise ValueError(f"sequence parallelism supports key-padding masks only, got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        mask = mask > (-1e4 if mask.is_floating_point() else 0)
    return mask.expand(batch, keys)


# ---- collectives with uneven shards ------------------------------------------------------------
def gather_sizes(length: int, group, device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([length], dtype=torch.int64, device=device), group=group)
    return [int(s.item()) for s in sizes]


def all_gather_uneven(tensor, sizes: list[int], dim: int, group):
    """all_gather of shards whose length along `dim` differs (gloo needs equal sizes: pad, then trim)."""
    longest = max(sizes)
    padding = longest - tensor.shape[dim]
    if padding:
        pad_shape = list(tensor.shape)
        pad_shape[dim] = padding
        tensor = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
    parts = [torch.empty_like(tensor) for _ in sizes]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat([part.narrow(dim, 0, size) for part, size in zip(parts, sizes)], dim=dim)


def ulysses_scatter_heads(x, sizes: list[int], group):
    """[B, S_local, H, D] -> [B, S_total, H/P, D]: every rank gets all tokens of its heads."""
    world = len(sizes)
    batch, local, heads, dim = x.shape
    chunks = x.reshape(batch, local, world, heads // world, dim).permute(2, 1, 0, 3, 4).contiguous()
    chunks = chunks.reshape(world * local, batch, heads // world, dim)
    out = torch.empty(sum(sizes), batch, heads // world, dim, dtype=x.dtype, device=x.device)
    dist.all_to_all_single(out, chunks, output_split_sizes=sizes, input_split_sizes=[local] * world, group=group)
    return out.permute(1, 0, 2, 3)


def ulysses_gather_heads(x, sizes: list[int], rank: int, group):
    """Inverse of ulysses_scatter_heads: [B, S_total, H/P, D] -> [B, S_local, H, D]."""
    world = len(sizes)
    batch, _total, local_heads, dim = x.shape
    local = sizes[rank]
    send = x.permute(1, 0, 2, 3).contiguous()
    out = torch.empty(world * local, batch, local_heads, dim, dtype=x.dtype, device=x.device)
    dist.all_to_all_single(out, send, output_split_sizes=[local] * world, input_split_sizes=sizes, group=group)
    return out.reshape(world, local, batch, local_heads, dim).permute(2, 1, 0, 3, 4).reshape(
        batch, local, world * local_heads, dim)


# ---- ring ----------------------------------------------------------------------------------------
def ring_attention(query, key, value, mask, scale, group):
    """Exact attention over keys spread around `group`: each step computes against the K/V chunk it
    holds while the next chunk arrives from the previous rank (P2P, overlapped with compute)."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    ranks = dist.get_process_group_ranks(group)
    send_to, receive_from = ranks[(rank + 1) % world], ranks[(rank - 1) % world]
    batch = query.shape[0]
    sizes = gather_sizes(key.shape[1], group, key.device)

    kv = torch.cat([key, value], dim=-1).contiguous()
    # Masks travel as uint8: gloo has no bool collectives.
    kv_mask = (mask if mask is not None else torch.ones(batch, key.shape[1], dtype=torch.bool,
                                                           device=key.device)).to(torch.uint8).contiguous()
    out = lse = None
    for step in range(world):
        pending = []
        if step + 1 < world:  # start receiving the next chunk before computing on this one
            incoming = (rank - step - 1) % world
            next_kv = torch.empty(batch, sizes[incoming], *kv.shape[2:], dtype=kv.dtype, device=kv.device)
            next_mask = torch.empty(batch, sizes[incoming], dtype=torch.uint8, device=kv.device)
            pending = dist.batch_isend_irecv([
                dist.P2POp(dist.isend, kv, send_to, group), dist.P2POp(dist.irecv, next_kv, receive_from, group),
                dist.P2POp(dist.isend, kv_mask, send_to, group),
                dist.P2POp(dist.irecv, next_mask, receive_from, group),
            ])
        k_block, v_block = kv.split(key.shape[-1], dim=-1)
        block_mask = None if mask is None else kv_mask.bool()
        block_out, block_lse = local_attention(query, k_block, v_block, block_mask, scale)
        out, lse = merge(out, lse, block_out, block_lse)
        for request in pending:
            request.wait()
        if pending:
            kv, kv_mask = next_kv, next_mask
    return out.to(query.dtype)


# ---- the entry point -----------------------------------------------------------------------------
def sequence_parallel_attention(query, key, value, attn_mask=None, scale=None, *, ulysses_group=None,
                                ring_group=None, backend=None):
    """`backend`: the diffusers attention backend the model's processor called (None: the active one).
    Attention that needs no log-sum-exp merge (Ulysses alone) runs on it, so users keep their flash/sage
    backend; Ring's blocks run on torch's kernels that return the log-sum-exp."""
    batch = query.shape[0]
    mask = key_padding_mask(attn_mask, batch, key.shape[1])
    if ulysses_group is not None and dist.get_world_size(ulysses_group) > 1:
        group = ulysses_group
        rank = dist.get_rank(group)
        q_sizes = gather_sizes(query.shape[1], group, query.device)
        kv_sizes = q_sizes if key.shape[1] == query.shape[1] else gather_sizes(key.shape[1], group, key.device)
        query = ulysses_scatter_heads(query, q_sizes, group)
        key = ulysses_scatter_heads(key, kv_sizes, group)
        value = ulysses_scatter_heads(value, kv_sizes, group)
        if mask is not None:
            mask = all_gather_uneven(mask.to(torch.uint8), kv_sizes, 1, group).bool()
        out = _inner(query, key, value, mask, scale, ring_group, backend)
        return ulysses_gather_heads(out, q_sizes, rank, group)
    return _inner(query, key, value, mask, scale, ring_group, backend)


def _inner(query, key, value, mask, scale, ring_group, backend):
    if ring_group is not None and dist.get_world_size(ring_group) > 1:
        return ring_attention(query, key, value, mask, scale, ring_group)
    return whole_attention(query, key, value, mask, scale, backend)


def whole_attention(query, key, value, mask, scale, backend=None):
    """Attention over all keys at once (after Ulysses' all-to-all every rank holds whole sequences of its
    heads): diffusers' dispatcher on `backend`, exactly as a single process would call it."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    # [B, 1, 1, K]: the shape diffusers' processors pass (e.g. Qwen-Image's joint mask); a backend that takes
    # no mask refuses it here as it would in one process.
    attn_mask = None if mask is None else mask[:, None, None, :]
    return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, scale=scale, backend=backend)
