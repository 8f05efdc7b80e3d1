"""What a cache run really skipped, for its report: counted from the blocks that ran.

A cache's own statistics can miss work it skipped (cache-dit reports one entry per block list and
none for a model it adapts through several), so the headline of every cache report is the count
of block computations that ran (diagnostics.count_block_work) against what an uncached run of the
same transformer calls computes. A run that skipped nothing says so, and why.
"""

from __future__ import annotations

from ..blocks.diagnostics import BlockWork


def cache_section(work: BlockWork, detail: str, why_nothing_skipped: str) -> dict:
    """The report section: `detail` is the cache's own account (steps per branch); the counted
    work decides the speedup estimate and whether the cache did anything."""
    if work.possible and not work.skipped:
        text = f"skipped nothing: {why_nothing_skipped} ({detail})"
    else:
        text = f"{work.text()}; {detail}"
    return {"text": text, "speedup_estimate": work.speedup(), "blocks_run": work.executed,
            "blocks_possible": work.possible, "skipped_nothing": bool(work.possible and not work.skipped)}
