"""A provider's own batch API (OpenAI's ``/files`` + ``/batches``), where batch prices apply.

Used for lines whose model is served by a provider configured with ``batch_api = true``:
the lines go upstream as one batch file, are polled until the provider is done, and each
result is billed at the catalog's batch prices. The calls go through the same transport as
the provider's live calls (:func:`thrifty.providers.http.pool_for`: its ``ca_file``, its
``proxy`` or the environment's, pooled connections), so batches keep the README's TLS and
proxy guarantee too.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import orjson

from thrifty.providers.config import ProviderConfig
from thrifty.providers.http import pool_for
from thrifty.providers.transport import Transport

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


def multipart(fields: dict[str, str], file: tuple[str, str, bytes, str]) -> tuple[bytes, bytes]:
    """A ``multipart/form-data`` body of text ``fields`` and one ``(field, filename, content,
    content type)`` file: (the Content-Type header line, the body)."""
    boundary = b"thrifty-" + secrets.token_hex(16).encode()
    parts = []
    for name, value in fields.items():
        parts.append(
            b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
            % (boundary, name.encode(), value.encode())
        )
    name, filename, content, ctype = file
    parts.append(
        b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
        b"Content-Type: %s\r\n\r\n%s\r\n"
        % (boundary, name.encode(), filename.encode(), ctype.encode(), content)
    )
    parts.append(b"--%s--\r\n" % boundary)
    return b"Content-Type: multipart/form-data; boundary=%s\r\n" % boundary, b"".join(parts)


_JSON = b"Content-Type: application/json\r\n"


class UpstreamBatchClient:
    """One provider's batch API over ``transport`` (its origin and base path, its headers);
    ``timeout`` bounds each call, ``connect`` each connection."""

    def __init__(self, transport: Transport, *, timeout: float = 60.0, connect: float = 5.0) -> None:
        self.transport = transport
        self.timeout = timeout
        self.connect = connect

    @classmethod
    def for_provider(
        cls, config: ProviderConfig, *, timeout: float = 60.0, connect: float = 5.0
    ) -> UpstreamBatchClient:
        """The client of ``config``'s batch API, on the transport its live calls use (same TLS
        trust and proxy policy)."""
        headers = {"User-Agent": "thrifty/0.1", **config.headers}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        pool = pool_for(config, (config.base_url or "").rstrip("/"), headers)
        return cls(pool, timeout=timeout, connect=connect)

    def close(self) -> None:
        self.transport.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: bytes = b"",
        params: dict[str, str] | None = None,
    ) -> bytes:
        """The body of a successful answer; :class:`UpstreamBatchError` for an error answer
        (the transport's ``HTTPError`` when none came)."""
        target = f"{path}?{urlencode(params)}" if params else path
        r = await self.transport.request(
            method, target, body, connect=self.connect, timeout=self.timeout, headers=headers
        )
        if r.status >= 400:
            detail = _provider_message(r.body)
            raise UpstreamBatchError(f"{method} {path}: HTTP {r.status}: {detail}", r.status, detail)
        return r.body

    async def _json(
        self, method: str, path: str, doc: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        body = orjson.dumps(doc) if doc is not None else b""
        raw = await self._call(
            method, path, body=body, headers=_JSON if doc is not None else b"", params=params
        )
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamBatchError(f"{method} {path}: the answer is not JSON") from None

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
        ctype, form = multipart(
            {"purpose": "batch"},
            (
                "file",
                input_filename(tag) if tag else "thrifty-batch.jsonl",
                content,
                "application/jsonl",
            ),
        )
        f = orjson.loads(await self._call("POST", "/files", body=form, headers=ctype))
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
            batch = await self._json("POST", "/batches", create)
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
        :class:`UpstreamBatchError` (or the transport's ``HTTPError``) if the provider cannot be
        asked."""
        after: str | None = None
        for _ in range(MAX_PAGES):
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._json("GET", "/batches", params=params)
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
            await self._json("DELETE", f"/files/{file_id}")
            return True
        except Exception as exc:  # noqa: BLE001 (best effort)
            log.info("could not delete the orphan input file %s: %s", file_id, type(exc).__name__)
            return False

    async def files_named(self, filename: str) -> list[str]:
        """Ids of the provider's batch input files called ``filename`` (best effort: [] if the
        provider cannot list them)."""
        try:
            page = await self._json("GET", "/files", params={"purpose": "batch"})
        except Exception as exc:  # noqa: BLE001 (best effort)
            log.info("could not list the provider's files: %s", type(exc).__name__)
            return []
        return [
            str(f["id"]) for f in page.get("data") or [] if f.get("filename") == filename and f.get("id")
        ]

    async def poll(self, batch_id: str) -> dict[str, Any] | None:
        """The upstream batch object once it is final, else None."""
        batch = await self._json("GET", f"/batches/{batch_id}")
        return batch if batch.get("status") in FINAL else None

    async def results(self, batch: dict[str, Any]) -> dict[str, tuple[int, dict[str, Any]]]:
        """``custom_id -> (status, body)`` from the output and error files."""
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        for key in ("output_file_id", "error_file_id"):
            fid = batch.get(key)
            if not fid:
                continue
            raw = await self._call("GET", f"/files/{fid}/content")
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
