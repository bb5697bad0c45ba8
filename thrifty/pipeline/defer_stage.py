"""Batch deferral as a pipeline stage: ``x-thrifty-defer: batch`` turns a call into a
one-line batch, answered at once with the batch object (202) to poll at ``/v1/batches/{id}``."""

from __future__ import annotations

from typing import Any

import orjson

from thrifty.errors import GatewayError
from thrifty.multipliers.batches import BatchRunner, BatchStore
from thrifty.multipliers.cache import scope_of
from thrifty.pipeline.call import CHAT, RESPONSES, Call

_ON = ("batch", "1", "true", "yes")
_OFF = ("0", "false", "no")
_URL = {CHAT: "/v1/chat/completions", RESPONSES: "/v1/responses"}


def wants_deferral(value: str | None) -> bool:
    """Whether an ``x-thrifty-defer`` value asks for deferral (a bad value: a 400)."""
    if value is None or value in _OFF:
        return False
    if value not in _ON:
        raise GatewayError(
            400,
            f"Invalid x-thrifty-defer header {value!r}: expected 'batch'.",
            code="invalid_header",
            param="x-thrifty-defer",
        )
    return True


class DeferStage:
    def __init__(self, store: BatchStore | None, runner: BatchRunner | None) -> None:
        self.store = store
        self.runner = runner

    async def submit(self, call: Call, body: dict[str, Any]) -> dict[str, Any]:
        """The batch that will run ``body`` (the request as the client sent it) for the caller."""
        if self.store is None or self.runner is None:
            raise GatewayError(
                400,
                "Deferred calls need batches, which are disabled on this gateway "
                "([batches] enabled = false).",
                code="batches_disabled",
            )
        url = _URL.get(call.endpoint)
        if url is None:
            raise GatewayError(
                400,
                f"x-thrifty-defer is not supported on the {call.endpoint} endpoint.",
                code="invalid_header",
                param="x-thrifty-defer",
            )
        p = call.principal
        owner = scope_of(p.team_id, p.key_id)
        line = orjson.dumps(
            {
                "custom_id": "deferred",
                "method": "POST",
                "url": url,
                "body": {k: v for k, v in body.items() if k not in ("stream", "stream_options")},
            }
        )
        f = await self.store.create_file(owner, "batch", "deferred.jsonl", line)
        fields = {
            "key_id": p.key_id,
            "user_id": p.user_id,
            "team_id": p.team_id,
            "tags": list(p.tags),
            "routing_profile": p.routing_profile,
        }
        batch = await self.store.create_batch(
            owner, fields, f["id"], url, "24h", {"thrifty": "deferred call"}
        )
        self.runner.start()
        self.runner.wake()
        return batch
