"""A provider's own batch API (OpenAI's ``/files`` + ``/batches``), where batch prices apply.

Used for lines whose model is served by a provider configured with ``batch_api = true``:
the lines go upstream as one batch file, are polled until the provider is done, and each
result is billed at the catalog's batch prices. aiohttp (already a dependency) does the
multipart upload.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

__all__ = ["UpstreamBatchClient", "UpstreamBatchError"]

FINAL = ("completed", "failed", "expired", "cancelled")


class UpstreamBatchError(Exception):
    pass


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
                raise UpstreamBatchError(f"{method} {path}: HTTP {r.status}: {raw[:300]!r}")
            return orjson.loads(raw)

    async def submit(self, endpoint: str, lines: list[tuple[str, dict[str, Any]]]) -> str:
        """Upload ``(custom_id, body)`` lines and create a batch; the upstream batch id."""
        content = b"".join(
            orjson.dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": body})
            + b"\n"
            for cid, body in lines
        )
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field(
                "file", content, filename="thrifty-batch.jsonl", content_type="application/jsonl"
            )
            f = await self._json(s, "POST", "/files", data=form)
            batch = await self._json(
                s,
                "POST",
                "/batches",
                json={"input_file_id": f["id"], "endpoint": endpoint, "completion_window": "24h"},
            )
        return str(batch["id"])

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
