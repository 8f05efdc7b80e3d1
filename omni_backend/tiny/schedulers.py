"""Schedulers configured like the real checkpoints' (all these families use flow matching)."""

from __future__ import annotations


def flow_match_scheduler(dynamic: bool = False, max_shift: float = 1.15, max_seq_len: int = 4096,
                         shift: float = 3.0, shift_terminal: float | None = None):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not dynamic:
        return FlowMatchEulerDiscreteScheduler(shift=shift)
    return FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=max_shift,
        base_image_seq_len=256, max_image_seq_len=max_seq_len, shift_terminal=shift_terminal,
        time_shift_type="exponential",
    )
