"""The attention kernels under sequence parallelism, in one process (the 2-rank runs are in
tests/parallel/test_parallel.py): the CPU kernel and the log-sum-exp merge against whole attention, the CUDA
kernels' calls against torch's meta kernels (no GPU here), and the routing of marked calls."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omni_backend.parallel.sp_attention import (
    _additive_mask,
    _aligned_bias,
    fused_attention_with_lse,
    fused_kernel_for,
    local_attention,
    merge,
)


def _qkv(batch=2, queries=37, keys=53, heads=4, dim=16, device="cpu", dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.randn(batch, length, heads, dim, device=device, dtype=dtype) for length in (queries, keys, keys)]


def test_blocks_merged_by_log_sum_exp_equal_whole_attention_on_the_cpu():
    query, key, value = _qkv()
    mask = torch.ones(2, 53, dtype=torch.bool)
    mask[1, 40:] = False  # padded keys of the second sample, all in the second block
    whole = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (query, key, value)),
                                           attn_mask=mask[:, None, None, :]).transpose(1, 2)
    out = lse = None
    for keys in (slice(0, 20), slice(20, 53)):  # uneven blocks, as ring ranks hold them
        block_out, block_lse = local_attention(query, key[:, keys], value[:, keys], mask[:, keys])
        out, lse = merge(out, lse, block_out, block_lse)
    assert (out - whole).abs().max() < 1e-5
    # A block whose keys are all masked for a sample contributes nothing (torch's CPU kernel returns
    # lse 0 there, not -inf).
    empty = torch.zeros(2, 5, dtype=torch.bool)
    empty[0] = True
    block_out, block_lse = local_attention(query, key[:, :5], value[:, :5], empty)
    merged, _ = merge(out, lse, block_out, block_lse)
    assert torch.equal(merged[1], out[1]) and not torch.equal(merged[0], out[0])
    assert fused_kernel_for(*(x.transpose(1, 2) for x in (query, key, value)), mask) is None, "CPU takes its own kernel"


def test_cuda_kernels_calls_match_torch_meta_kernels():
    """The CUDA branch cannot run here: its op calls run on torch's meta kernels, which give the shapes
    and dtypes the CUDA kernels return (the memory-efficient one pads its log-sum-exp to 32 queries)."""
    for dtype, kernel, masked in [(torch.bfloat16, "flash", False), (torch.float32, "efficient", True),
                                  (torch.bfloat16, "efficient", False)]:
        q, k, v = (x.transpose(1, 2) for x in _qkv(device="meta", dtype=dtype))
        mask = torch.ones(2, 53, dtype=torch.bool, device="meta") if masked else None
        out, lse = fused_attention_with_lse(q, k, v, mask, 0.25, kernel)
        assert out.shape == q.shape and out.dtype == dtype, kernel
        assert lse.shape == (2, 4, 37) and lse.dtype == torch.float32, kernel


def test_memory_efficient_bias_is_the_mask_broadcast_from_aligned_rows():
    query, key, _ = _qkv()
    q, k = query.transpose(1, 2), key.transpose(1, 2)
    mask = torch.rand(2, 53) > 0.3
    bias = _aligned_bias(mask, q, k)
    assert bias.shape == (2, 4, 37, 53) and bias.dtype == q.dtype
    assert bias.stride(0) % 16 == 0 and bias.stride(1) == bias.stride(2) == 0, "no copy per head or query"
    assert torch.equal(bias, _additive_mask(mask, q.dtype).expand(2, 4, 37, 53))


def test_marked_calls_reach_sequence_parallel_attention_on_every_backend():
    """Routing wraps every diffusers backend; a marked call with no groups is whole attention on the backend
    it was dispatched to (what Ulysses runs after its all-to-all), an unmarked call is untouched."""
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    from omni_backend.parallel.sequence_parallel import SequenceParallelAttention, route_attention_backends

    route_attention_backends()
    route_attention_backends()  # idempotent: wrapped once
    query, key, value = _qkv()
    mask = torch.ones(2, 53, dtype=torch.bool)
    mask[0, 50:] = False
    marker = SequenceParallelAttention(ulysses_group=None, ring_group=None, sp_group=None)
    for backend in (AttentionBackendName.NATIVE, AttentionBackendName._NATIVE_MATH):
        plain = dispatch_attention_fn(query, key, value, attn_mask=mask[:, None, None, :], backend=backend)
        marked = dispatch_attention_fn(query, key, value, attn_mask=mask[:, None, None, :], backend=backend,
                                       parallel_config=marker)
        assert (marked - plain).abs().max() < 1e-6, backend
