"""The check every cache test makes of a run's report: its counts are the blocks that really ran."""

from __future__ import annotations


def assert_report_counts_the_work(result, cache, cached_work, plain_work) -> None:
    """`cached_work`/`plain_work`: count_block_work around the cached run and an uncached one."""
    assert plain_work.possible == plain_work.executed, "an uncached run computes every block it could"
    section = result.report.sections[cache.label]
    assert section["blocks_run"] == cached_work.executed, section["text"]
    assert section["blocks_possible"] == plain_work.executed, section["text"]
    assert f"{cached_work.executed}/{plain_work.executed} block computations ran" in section["text"]
    assert section["speedup_estimate"] == plain_work.executed / cached_work.executed
