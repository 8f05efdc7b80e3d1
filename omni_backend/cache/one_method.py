"""One cache method per model: TeaCache and Cache-DiT skip the same transformer work.

A spec holds one cache, so no `problems(spec)` can see two: the cache nodes ask `refuse_second_cache`
before they replace the cache a spec already has. Both cache configs declare the rule in `RULES`.
"""

from __future__ import annotations

from ..rules.compat import define_rule, refuse

ONE_CACHE_METHOD = define_rule(
    "cache.one_method", ("teacache", "cache_dit"),
    "TeaCache and Cache-DiT both skip the same transformer work: a model takes one cache method",
    first="{new}", second="{existing}",
    reason="a model takes one cache method (TeaCache and Cache-DiT both skip the same transformer work and "
           "cannot be stacked)",
    fix="remove {existing} or {new} from the chain")


def refuse_second_cache(existing, new_title: str) -> None:
    if existing is None:
        return
    refuse(ONE_CACHE_METHOD.problem(new=new_title, existing=existing.node_title))
