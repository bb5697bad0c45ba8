"""A provider's own batch API (OpenAI's ``/files`` + ``/batches``), where batch prices apply.

Used for lines whose model is served by a provider configured with ``batch_api = true``:
the lines go upstream as one batch file, are polled until the provider is done, and each
result is billed at the catalog's batch prices. aiohttp (already a dependency) does the
multipart upload.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("thrifty.batches")

__all__ = ["TAG_KEY", "TRANSIENT_4XX", "UpstreamBatchClient", "UpstreamBatchError", "input_filename"]

FINAL = ("completed", "failed", "expired", "cancelled")


#: The metadata key of a provider batch that names the thrifty submission it carries.
TAG_KEY = "thrifty_submission"
#: How far back before a submission was recorded a provider batch of it may be listed as created
#: (clock skew between thrifty and the provider).
SKEW = 600.0
MAX_PAGES = 1000  # of 100 batches: the provider's list is searched this far at most


#: 4xx statuses that do not mean the provider refused the request for good (timeout, conflict,
#: rate limit): retried like a 5xx.
TRANSIENT_4XX = (408, 409, 429)


class UpstreamBatchError(Exception):
    """A provider batch API call that failed; ``status`` is its HTTP status (None: no answer or
    an unusable one), ``detail`` the provider's own error message when it gave one."""

    def __init__(self, message: str, status: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    @property
    def permanent(self) -> bool:
        """The provider refused the request for good (a 4xx other than 408, 409 and 429): sending
        it again cannot succeed, and it made nothing of it."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in TRANSIENT_4XX


def _provider_message(raw: bytes) -> str:
    """The message of a provider's error answer (OpenAI's ``{"error": {"message"}}``), else the
    start of its body."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
        if isinstance(msg, str) and msg:
            return msg[:1000]
    return raw[:300].decode("utf-8", "replace").strip() or "(no message)"


def input_filename(tag: str) -> str:
    return f"{tag}.jsonl"


class UpstreamBatchClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _json(
        self, session: aiohttp.ClientSession, method: str, path: str, **kw: Any
    ) -> dict[str, Any]:
        async with session.request(method, self.base_url + path, headers=self.headers, **kw) as r:
            raw = await r.read()
            if r.status >= 400:
                detail = _provider_message(raw)
                raise UpstreamBatchError(f"{method} {path}: HTTP {r.status}: {detail}", r.status, detail)
            return orjson.loads(raw)

    async def submit(
        self,
        endpoint: str,
        lines: list[tuple[str, dict[str, Any]]],
        tag: str | None = None,
        on_file: Callable[[str], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Upload ``(custom_id, body)`` lines and create a batch of them; the provider's batch
        object. ``tag`` (the thrifty submission) names the input file and goes into the batch's
        metadata, so that :meth:`find` can tell later whether the provider has it; ``on_file``
        is told the uploaded file's id before the batch is created. If the provider refuses to
        create the batch for good (:attr:`UpstreamBatchError.permanent`), the file is deleted
        (best effort); any error is raised. A permanent refusal of the upload or of the create
        call means the provider has no batch of these lines."""
        content = b"".join(
            orjson.dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": body})
            + b"\n"
            for cid, body in lines
        )
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field(
                "file",
                content,
                filename=input_filename(tag) if tag else "thrifty-batch.jsonl",
                content_type="application/jsonl",
            )
            f = await self._json(s, "POST", "/files", data=form)
            if on_file is not None:
                await on_file(str(f["id"]))
            create: dict[str, Any] = {
                "input_file_id": f["id"],
                "endpoint": endpoint,
                "completion_window": "24h",
            }
            if tag:
                create["metadata"] = {TAG_KEY: tag}
            try:
                batch = await self._json(s, "POST", "/batches", json=create)
            except UpstreamBatchError as exc:
                if exc.permanent:
                    # Refused for sure: no batch of this file exists. (After a timeout or a 5xx
                    # the batch may exist: the file is then left for find() to decide.)
                    await self.delete_file(str(f["id"]))
                raise
        return batch

    async def find(self, tag: str, not_before: float | None = None) -> dict[str, Any] | None:
        """The provider's batch whose metadata carries ``tag``, or None if it has none: pages
        through ``GET /batches`` (newest first) until the batch is found, the list ends, or it
        reaches batches created before ``not_before`` (less :data:`SKEW`). Raises
        :class:`UpstreamBatchError` (or aiohttp's errors) if the provider cannot be asked."""
        after: str | None = None
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            for _ in range(MAX_PAGES):
                params = {"limit": "100", **({"after": after} if after else {})}
                page = await self._json(s, "GET", "/batches", params=params)
                data = page.get("data")
                if not isinstance(data, list):
                    raise UpstreamBatchError("GET /batches: no 'data' list in the answer")
                for batch in data:
                    if (batch.get("metadata") or {}).get(TAG_KEY) == tag:
                        return batch
                older = [b.get("created_at") for b in data if isinstance(b.get("created_at"), (int, float))]
                if not_before is not None and older and min(older) < not_before - SKEW:
                    return None  # newest first: the rest is older than the submission
                if not page.get("has_more") or not data:
                    return None
                after = page.get("last_id") or data[-1].get("id")
        raise UpstreamBatchError(f"GET /batches: {tag} not found in {MAX_PAGES} pages")

    async def delete_file(self, file_id: str) -> bool:
        """Delete an input file no batch was made of (best effort; it costs nothing but storage)."""
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as s:
                await self._json(s, "DELETE", f"/files/{file_id}")
            return True
        except Exception as exc:  # noqa: BLE001 (best effort)
            log.info("could not delete the orphan input file %s: %s", file_id, type(exc).__name__)
            return False

    async def files_named(self, filename: str) -> list[str]:
        """Ids of the provider's batch input files called ``filename`` (best effort: [] if the
        provider cannot list them)."""
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as s:
                page = await self._json(s, "GET", "/files", params={"purpose": "batch"})
        except Exception as exc:  # noqa: BLE001 (best effort)
            log.info("could not list the provider's files: %s", type(exc).__name__)
            return []
        return [
            str(f["id"]) for f in page.get("data") or [] if f.get("filename") == filename and f.get("id")
        ]

    async def poll(self, batch_id: str) -> dict[str, Any] | None:
        """The upstream batch object once it is final, else None."""
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            batch = await self._json(s, "GET", f"/batches/{batch_id}")
        return batch if batch.get("status") in FINAL else None

    async def results(self, batch: dict[str, Any]) -> dict[str, tuple[int, dict[str, Any]]]:
        """``custom_id -> (status, body)`` from the output and error files."""
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            for key in ("output_file_id", "error_file_id"):
                fid = batch.get(key)
                if not fid:
                    continue
                async with s.get(f"{self.base_url}/files/{fid}/content", headers=self.headers) as r:
                    if r.status >= 400:
                        raise UpstreamBatchError(f"GET /files/{fid}/content: HTTP {r.status}")
                    raw = await r.read()
                for line in raw.splitlines():
                    if not line.strip():
                        continue
                    doc = orjson.loads(line)
                    resp = doc.get("response") or {}
                    if resp:
                        out[doc["custom_id"]] = (
                            int(resp.get("status_code", 500)),
                            resp.get("body") or {},
                        )
                    else:
                        out[doc["custom_id"]] = (
                            500,
                            {"error": doc.get("error") or {"message": "failed upstream"}},
                        )
        return out
