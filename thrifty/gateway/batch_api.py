"""The HTTP side of batch deferral: two small Starlette apps the gateway mounts at
``/v1/files`` and ``/v1/batches`` (:func:`batch_mounts`), speaking OpenAI's API and errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from thrifty.bodylimit import DEFAULT_MAX_BODY_BYTES, limit_body
from thrifty.errors import ThriftyError, openai_error
from thrifty.multipliers.batches import MAX_FILE_BYTES, BatchError, BatchRunner, BatchStore
from thrifty.multipliers.cache import scope_of

__all__ = ["batch_mounts"]

_MULTIPART_SLACK = 1 << 20  # the multipart envelope and the 'purpose' field around a file

Authenticate = Callable[[str | None], Awaitable[Any]]  # SpendControl.authenticate
#: An endpoint's work, given the request, the caller's scope and its principal's fields.
Handler = Callable[[Request, str, dict[str, Any]], Awaitable[Response]]


def _error(exc: ThriftyError) -> JSONResponse:
    return JSONResponse(openai_error(exc), exc.status, headers=exc.headers or None)


def _principal_fields(p: Any) -> dict[str, Any]:
    return {
        "key_id": p.key_id,
        "user_id": p.user_id,
        "team_id": p.team_id,
        "tags": list(p.tags),
        "routing_profile": p.routing_profile,
    }


def batch_mounts(
    store: BatchStore,
    runner: BatchRunner,
    authenticate: Authenticate,
    *,
    max_body_bytes: int | None = None,
) -> dict[str, Any]:
    """``{"/v1/files": app, "/v1/batches": app}`` for ``create_app(..., mounts=...)``.

    Bodies over ``max_body_bytes`` (the gateway's setting) get a 413 in OpenAI's format before
    they are read; an upload to ``/v1/files`` may be as large as a batch input file may be
    (``MAX_FILE_BYTES`` plus the multipart envelope) when that is more.
    """

    def handler(fn: Handler):
        async def endpoint(request: Request) -> Response:
            auth = request.headers.get("authorization") or request.headers.get("x-api-key")
            runner.start()  # idempotent; the gateway's startup should start it too (resume after restart)
            try:
                principal = await authenticate(auth)
                owner = scope_of(principal.team_id, principal.key_id)
                return await fn(request, owner, _principal_fields(principal))
            except ThriftyError as exc:  # a BatchError, or spend control's refusal
                return _error(exc)

        return endpoint

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            raise BatchError(400, "Request body is not valid JSON.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise BatchError(400, "Request body must be a JSON object.", code="invalid_json")
        return body

    # -- files --
    async def upload(request: Request, owner: str, _: dict[str, Any]) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BatchError(
                400,
                "Upload the file as multipart/form-data with fields 'file' and 'purpose'.",
                param="file",
            )
        form = await request.form()
        upload_ = form.get("file")
        purpose = form.get("purpose")
        if upload_ is None or isinstance(upload_, str):
            raise BatchError(400, "Missing required parameter: 'file'.", param="file")
        if not isinstance(purpose, str):
            raise BatchError(400, "Missing required parameter: 'purpose'.", param="purpose")
        content = await upload_.read()
        return JSONResponse(
            await store.create_file(owner, purpose, upload_.filename or "upload.jsonl", content)
        )

    async def list_files(request: Request, owner: str, _: dict[str, Any]) -> Response:
        return JSONResponse(
            {"object": "list", "data": await store.list_files(owner), "has_more": False}
        )

    async def get_file(request: Request, owner: str, _: dict[str, Any]) -> Response:
        return JSONResponse(await store.get_file(owner, request.path_params["id"]))

    async def delete_file(request: Request, owner: str, _: dict[str, Any]) -> Response:
        return JSONResponse(await store.delete_file(owner, request.path_params["id"]))

    async def file_content(request: Request, owner: str, _: dict[str, Any]) -> Response:
        content = await store.file_content(owner, request.path_params["id"])
        return Response(content, media_type="application/octet-stream")

    # -- batches --
    async def create_batch(request: Request, owner: str, principal: dict[str, Any]) -> Response:
        body = await json_body(request)
        batch = await store.create_batch(
            owner,
            principal,
            body.get("input_file_id"),
            body.get("endpoint"),
            body.get("completion_window"),
            body.get("metadata"),
        )
        runner.wake()
        return JSONResponse(batch)

    async def list_batches(request: Request, owner: str, _: dict[str, Any]) -> Response:
        try:
            limit = max(1, min(100, int(request.query_params.get("limit", "20"))))
        except ValueError:
            raise BatchError(400, "Invalid 'limit': expected an integer.", param="limit") from None
        data = await store.list_batches(owner, limit)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def get_batch(request: Request, owner: str, _: dict[str, Any]) -> Response:
        return JSONResponse(await store.get_batch(owner, request.path_params["id"]))

    async def cancel_batch(request: Request, owner: str, _: dict[str, Any]) -> Response:
        batch = await store.cancel_batch(owner, request.path_params["id"])
        runner.wake()
        return JSONResponse(batch)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(BatchError(404, f"Unknown path: {request.url.path}.", code="not_found"))

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(
            BatchError(
                405,
                f"Method {request.method} not allowed on {request.url.path}.",
                code="method_not_allowed",
            )
        )

    async def internal(request: Request, exc: Exception) -> Response:
        return _error(
            BatchError(500, "Internal gateway error.", code="internal_error", type="api_error")
        )

    def app(*routes: tuple[str, str, Handler]) -> Starlette:
        """Routes ``(method, path, handler)`` whose errors, as every other, are OpenAI's."""
        return Starlette(
            routes=[Route(path, handler(fn), methods=[method]) for method, path, fn in routes],
            exception_handlers={404: not_found, 405: not_allowed, 500: internal},
        )

    files = app(
        ("POST", "/", upload),
        ("GET", "/", list_files),
        ("GET", "/{id}", get_file),
        ("DELETE", "/{id}", delete_file),
        ("GET", "/{id}/content", file_content),
    )
    batches = app(
        ("POST", "/", create_batch),
        ("GET", "/", list_batches),
        ("GET", "/{id}", get_batch),
        ("POST", "/{id}/cancel", cancel_batch),
    )
    limit = max_body_bytes or DEFAULT_MAX_BODY_BYTES
    return {
        "/v1/files": limit_body(files, max(limit, MAX_FILE_BYTES + _MULTIPART_SLACK)),
        "/v1/batches": limit_body(batches, limit),
    }
