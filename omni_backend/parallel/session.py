"""What a parallel layout does around one run inside a worker."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from .cfg_parallel import cfg_parallel_forward


@contextlib.contextmanager
def parallel_run(ctx, context):
    config = context.config
    world = context.group("world")

    def agree_to_stop(_step, stop: bool) -> bool:
        # Every rank must leave the loop at the same step, or the others wait in a collective.
        flag = torch.tensor([1.0 if stop else 0.0], device=context.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=world)
        return bool(flag.item())

    ctx.step_end_hooks.append(agree_to_stop)
    if config.sequence_parallel > 1:
        sp_group = context.group("sp")

        def sum_over_sequence(sums):
            sums = sums.to(context.device)
            dist.all_reduce(sums, group=sp_group)
            return sums.cpu()

        ctx.reduce_sums = sum_over_sequence
    summary = {"text": config.describe()}
    if config.tensor_parallel > 1:
        local = sum(p.numel() * p.element_size() for _name, transformer in ctx.family.transformers(ctx.pipe)
                    for p in transformer.parameters())
        gathered = [torch.zeros(1, dtype=torch.int64, device=context.device) for _ in range(context.world_size)]
        dist.all_gather(gathered, torch.tensor([local], dtype=torch.int64, device=context.device), group=world)
        per_rank = [int(count.item()) for count in gathered]
        summary["rank_weight_bytes"] = per_rank
        summary["text"] += f"; DiT weights per rank {', '.join(f'{b / 2**20:.1f}' for b in per_rank)} MiB"
    ctx.report.add("Parallel", summary)
    with contextlib.ExitStack() as stack:
        if config.cfg_parallel > 1:
            if ctx.family.runs_two_branches(ctx.pipe, ctx.request):
                for _name, transformer in ctx.family.transformers(ctx.pipe):
                    stack.enter_context(cfg_parallel_forward(transformer, context.group("cfg"),
                                                             batched=not ctx.family.cfg_in_separate_calls,
                                                             family=ctx.family))
            else:
                ctx.report.notice(f"guidance {ctx.request.guidance} runs no negative branch: CFG-parallel ranks "
                                  "computed the same branch (set guidance > 1, or cfg_parallel 1)")
        yield
