"""Weight-level parallel set-up of a pipeline inside a worker (run once per load)."""

from __future__ import annotations

from ..errors import OmniIncompatibleError
from .sequence_parallel import SequenceParallelAttention, apply_sequence_parallel
from .tensor_parallel import apply_tensor_parallel, finish_tensor_parallel


def parallelize_pipeline(pipe, spec, context) -> None:
    config = context.config
    family = spec.family
    if config.tensor_parallel > 1:
        group = context.group("tp")
        for _name, transformer in family.transformers(pipe):
            plan = family.tensor_parallel_plan(transformer)
            if plan is None:
                raise OmniIncompatibleError("Parallel Config (tensor parallel)", family.title,
                                            "this model has no tensor-parallel plan", "set tensor_parallel to 1")
            apply_tensor_parallel(transformer, plan, group)
            finish_tensor_parallel(transformer, family, group)
    if config.sequence_parallel > 1:
        attention = SequenceParallelAttention(ulysses_group=context.group("ulysses"),
                                              ring_group=context.group("ring"), sp_group=context.group("sp"))
        for _name, transformer in family.transformers(pipe):
            plan = family.sequence_parallel_plan(transformer)
            if plan is None:
                raise OmniIncompatibleError("Parallel Config (sequence parallel)", family.title,
                                            "this model has no sequence-parallel plan",
                                            "set ulysses_degree and ring_degree to 1")
            apply_sequence_parallel(transformer, plan, attention)
