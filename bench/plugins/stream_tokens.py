"""A benchmark-only eval protocol (`jepa -p stream_tokens`, with bench/plugins on PYTHONPATH):
it asks for the token features, so that `jepa eval` caches the largest kind, and reads every
shard of them once, as a streaming protocol does. It reports the tokens it read; it trains
nothing. bench/eval_memory.py uses it to show that extraction and reading stay within one
shard's memory."""

from __future__ import annotations

import attrs

from jepa_core.hookspecs import hookimpl


@attrs.frozen
class StreamTokensConfig:
    """Read every token shard once (benchmark)."""


class StreamTokens:
    feature_kinds = ("tokens",)

    def run(self, features: dict, context: object) -> list[dict]:
        if "tokens" not in features:
            return []
        seen = 0
        for split in features["tokens"]:
            for x, _ in split.shards():
                seen += x.shape[0] * x.shape[1]
                del x  # a streaming protocol lets go of a shard before the next
        return [{"protocol": "stream_tokens", "feature_kind": "tokens", "params": {},
                 "value": float(seen)}]


@hookimpl
def register_eval_protocols(register):
    register("stream_tokens", StreamTokensConfig, lambda config: StreamTokens())
