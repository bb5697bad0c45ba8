"""The admin dashboard at ``/ui``: server-rendered pages (Jinja2) with Chart.js charts.

Every asset ships in the package (``static/``: Chart.js, vendored from npm with
its license, plus a small script and a stylesheet); nothing loads from a CDN.
Sign-in takes the admin key (checked by spend control, like the admin API) and
sets a signed, HttpOnly session cookie; API clients may send the admin key as
``Authorization: Bearer ...`` instead. The pages read the ledger through
:mod:`thrifty.reports.query`, the same code as ``thrifty report``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from thrifty.reports import session
from thrifty.reports.feedback import error_response
from thrifty.spend.contract import SpendError

HERE = Path(__file__).parent
DAY = 86_400


def _templates() -> Any:
    import jinja2

    from thrifty.reports.format import decimals_for, per_day, usd, usd_nanos

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    env.filters["usd"] = usd_nanos  # usd(decimals) for a column's shared precision
    env.globals["decimals"] = lambda nanos: max((decimals_for(n / 1e9) for n in nanos if n), default=2)
    env.filters["per_day"] = lambda v: per_day(v * 1e9)
    env.filters["pct"] = lambda v: "-" if v is None else f"{v:.1f}%"
    env.filters["share"] = lambda v: f"{v:.1%}"
    env.filters["num"] = lambda v: f"{v:,}"
    env.filters["mtok"] = lambda v: "-" if v is None else usd(v)
    env.filters["day"] = lambda ts: "-" if ts is None else time.strftime("%Y-%m-%d", time.gmtime(ts))
    env.filters["when"] = lambda ts: "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
    return env


class BadInput(ValueError):
    pass


def _date(value: str | None, name: str, default: float) -> float:
    from thrifty.spend.periods import parse_time

    if not value:
        return default
    try:
        return parse_time(value)
    except ValueError:
        raise BadInput(f"{name}: not a date ({value!r}); use YYYY-MM-DD") from None


def parse_filters(params: Any, now: float) -> tuple[Any, str, dict[str, str]]:
    """(Filters, group by, the form's values) from query parameters; BadInput on bad ones."""
    from thrifty.reports.filters import Filters
    from thrifty.reports.query import GROUPS

    form = {k: (params.get(k) or "").strip() for k in ("since", "until", "team", "user", "key", "model", "tag", "by")}
    until = _date(form["until"], "until", now)
    if form["until"] and len(form["until"]) == 10:
        until += DAY  # a date means "through the end of that day"
    since = _date(form["since"], "since", until - 30 * DAY)
    by = form["by"] or "team"
    if by not in GROUPS:
        raise BadInput(f"group by must be one of {', '.join(GROUPS)}")
    try:
        f = Filters(since=since, until=until, team=form["team"] or None, user=form["user"] or None,
                    key=form["key"] or None, model=form["model"] or None, tag=form["tag"] or None)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if not form["since"]:
        form["since"] = time.strftime("%Y-%m-%d", time.gmtime(since))
    return f, by, form


def _js(obj: Any) -> str:
    """JSON safe to embed in a <script> element."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16",
           "#f97316", "#64748b", "#14b8a6", "#a855f7")
UNSERVED_COLOUR = "#cbd5e1"


def model_palette(names: Any) -> dict[str, str]:
    """A colour per configured model, by its place in the sorted list: the same on every page."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(names))}


def colour(model: str | None, palette_of: dict[str, str]) -> str:
    """The model's colour; a model not in the config gets one from a stable hash of its name."""
    import zlib

    if not model or model.startswith("(not served"):
        return UNSERVED_COLOUR
    return palette_of.get(model) or PALETTE[zlib.crc32(model.encode()) % len(PALETTE)]


def _chart_data(report: Any, palette_of: dict[str, str] | None = None) -> dict[str, Any]:
    palette_of = palette_of or {}
    fmt = "%m-%d %H:00" if report.bucket_seconds < DAY else "%Y-%m-%d"
    step = report.bucket_seconds
    first = int(report.filters.since // step) * step
    # Every bucket of the range, traffic or not, so the time axis is continuous.
    buckets = sorted(set(range(first, int(report.filters.until), step)) | set(report.series))
    labels = [time.strftime(fmt, time.gmtime(b)) for b in buckets]
    from thrifty.reports.render import label

    keys = [g.name or "(none)" for g in report.models]  # report.series names a missing model "(none)"
    models = [label("model", g.name) for g in report.models]
    empty: dict[str, Any] = {}
    stacked = [{"label": name, "color": colour(name, palette_of),
                "data": [round(report.series[b][m].cost_nanos / 1e9, 6)
                         if m in report.series.get(b, empty) else 0 for b in buckets]}
               for m, name in zip(keys, models, strict=True)]
    price, frontier, paid_cum, frontier_cum = [], [], [], []
    acc_c = acc_f = 0
    for b in buckets:
        per = report.series.get(b, empty).values()
        c, f, tok = (sum(t.cost_nanos for t in per), sum(t.frontier_cost_nanos for t in per),
                     sum(t.tokens for t in per))
        price.append(round(c / 1e3 / tok, 4) if tok else None)
        frontier.append(round(f / 1e3 / tok, 4) if tok else None)
        acc_c, acc_f = acc_c + c, acc_f + f
        paid_cum.append(round(acc_c / 1e9, 6))
        frontier_cum.append(round(acc_f / 1e9, 6))
    return {"labels": labels, "stacked": stacked, "price": price, "frontier_price": frontier,
            "paid_cum": paid_cum, "frontier_cum": frontier_cum,
            "mix": {"labels": models, "data": [g.totals.requests for g in report.models],
                    "colors": [colour(m, palette_of) for m in models]}}


MIN_HOURS = 12  # the shortest axis: a few requests still get an axis of hours, not of minutes


def _fit_to_data(db: Any, f: Any) -> Any:
    """``f`` with ``since`` moved up to the first request in range (whole hours, at least
    MIN_HOURS before ``until``), so one day of data gets an hourly axis, not a 30-day one."""
    from thrifty.reports.query import with_range

    conds, params = f.conditions()
    where = "".join(f" AND {c}" for c in conds)
    row = db.one(f"SELECT MIN(ts) FROM ledger WHERE ts >= ? AND ts < ?{where}", (f.since, f.until, *params))
    first = row[0] if row else None
    if first is None:
        return f
    hour = 3600
    since = min(int(first // hour) * hour, int(f.until // hour) * hour - (MIN_HOURS - 1) * hour)
    return with_range(f, max(f.since, float(since)), f.until)


def _projection(b: dict[str, Any], now: float) -> list[list[float]]:
    """The burn-down's straight line from now to exhaustion, or to the reset if that comes first."""
    if not b["runs_out_at"] or b["remaining_nanos"] <= 0:
        return []
    stop = min(b["runs_out_at"], b["period_end"] or b["runs_out_at"])
    at_stop = b["spent_nanos"] / 1e9 + b["usd_per_day"] * (stop - now) / DAY
    return [[int(now * 1000), b["spent_nanos"] / 1e9], [int(stop * 1000), round(at_stop, 6)]]


def create_ui_app(spend: Any, config: Any = None) -> Starlette:
    """The dashboard as an ASGI app, to mount at ``/ui``."""
    from thrifty.reports.tables import ensure_tables
    from thrifty.spend.db import Database

    env = _templates()
    lock = threading.Lock()
    state: dict[str, Any] = {}
    palette_of = model_palette(getattr(config, "models", None) or ())

    def db() -> Database:
        # Its own connection, used by one thread at a time (under ``lock``).
        if "db" not in state:
            state["db"] = Database(spend.db_url)
            ensure_tables(state["db"])
            state["secret"] = session.load_secret(state["db"])
        return state["db"]

    def locked(fn: Callable[[], Any]) -> Any:
        with lock:
            db()
            return fn()

    def base(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(base=base(request), page=name.split(".")[0], **ctx)
        return HTMLResponse(html, status)

    async def admin_ok(token: str | None) -> bool:
        if not token:
            return False
        try:
            principal = await spend.authenticate(f"Bearer {token}")
        except SpendError:
            return False
        return bool(principal.is_admin)

    async def signed_in(request: Request) -> bool:
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            return await admin_ok(auth[7:].strip())
        await run_in_threadpool(locked, lambda: None)
        return session.verify(state["secret"], request.cookies.get(session.COOKIE)) is not None

    def guarded(handler: Callable, *, api: bool = False) -> Callable:
        async def endpoint(request: Request) -> Response:
            if not await signed_in(request):
                if api:
                    return error_response(401, "Sign in at /ui/login or send the admin key as a Bearer token.",
                                          "authentication_error", "invalid_api_key")
                target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="/")
                return RedirectResponse(f"{base(request)}/login?next={target}", 303)
            try:
                return await handler(request)
            except BadInput as exc:
                if api:
                    return error_response(400, str(exc), "invalid_request_error", "invalid_value")
                return page(request, "error.html", 400, message=str(exc))
        return endpoint

    async def login_form(request: Request) -> Response:
        return page(request, "login.html", next=request.query_params.get("next", ""), error=None)

    async def login(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        nxt = form.get("next") or ""
        if not nxt.startswith(base(request) + "/") or nxt.startswith("//"):
            nxt = base(request) + "/"
        key = form.get("admin_key", "").strip()
        if not await admin_ok(key):
            return page(request, "login.html", 401, next=nxt, error="That is not a valid admin key.")
        principal = await spend.authenticate(f"Bearer {key}")
        token = await run_in_threadpool(locked, lambda: session.sign(state["secret"], principal.key_id))
        response = RedirectResponse(nxt, 303)
        response.set_cookie(session.COOKIE, token, max_age=session.SESSION_SECONDS, httponly=True, samesite="strict",
                            path=base(request) or "/")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse(f"{base(request)}/login", 303)
        response.delete_cookie(session.COOKIE, path=base(request) or "/")
        return response

    def _report(params: Any) -> tuple[Any, dict[str, str], dict[str, Any]]:
        from thrifty.reports.query import build_report

        now = time.time()
        f, by, form = parse_filters(params, now)
        spend.flush()  # the ledger is written in batches: include what was just served

        def run() -> tuple[Any, dict[str, Any]]:
            nonlocal f
            if not (params.get("since") or "").strip():
                f = _fit_to_data(db(), f)  # the time axis follows the data (a day of it: hourly)
                form["since"] = time.strftime("%Y-%m-%d", time.gmtime(f.since))
            report = build_report(db(), f, by, now=now)
            options = {
                "teams": [r[0] for r in db().all("SELECT id FROM teams ORDER BY id")],
                "users": [r[0] for r in db().all("SELECT id FROM users ORDER BY id")],
                "models": sorted({g.name for g in report.models if g.name}
                                 | ({f.model} if f.model else set())),
            }
            return report, options

        report, options = locked(run)
        return report, form, options

    async def overview(request: Request) -> Response:
        report, form, options = await run_in_threadpool(_report, request.query_params)
        return page(request, "overview.html", report=report, form=form, options=options,
                    charts=_js(_chart_data(report, palette_of)))

    async def budgets(request: Request) -> Response:
        from thrifty.reports.burndown import burndown, cumulative_spend
        from thrifty.reports.rollup import closed_until

        def run() -> list[dict[str, Any]]:
            spend.flush()
            now = time.time()

            def inner() -> list[dict[str, Any]]:
                closed = closed_until(db())
                rows = burndown(db(), now=now, closed=closed)
                for b in rows:
                    points = cumulative_spend(db(), b, now, closed)
                    b["chart"] = {"spent": [[int(t * 1000), v / 1e9] for t, v in points],
                                  "limit": b["limit_nanos"] / 1e9,
                                  "projection": _projection(b, now),
                                  "end": int(b["period_end"] * 1000) if b["period_end"] else None}
                return rows

            return locked(inner)

        rows = await run_in_threadpool(run)
        return page(request, "budgets.html", budgets=rows, now=time.time(),
                    charts=_js({b["id"]: b["chart"] for b in rows}))

    async def keys(request: Request) -> Response:
        from thrifty.spend import admin_ops

        params = dict(request.query_params)
        params["by"] = "key"
        report, form, options = await run_in_threadpool(_report, params)
        spent = {g.name: g for g in report.groups}
        rows = await run_in_threadpool(locked, lambda: admin_ops.list_keys(db(), include_revoked=True))
        return page(request, "keys.html", keys=rows, spent=spent, report=report, form=form, options=options)

    def _live(window: float = 900.0) -> dict[str, Any]:
        spend.flush()

        def run() -> dict[str, Any]:
            now = time.time()
            mix = db().all(
                "SELECT served_model, COUNT(*), COALESCE(SUM(cost_nanos), 0), COALESCE(SUM(frontier_cost_nanos), 0)"
                " FROM ledger WHERE ts >= ? AND status = 200 GROUP BY served_model ORDER BY 2 DESC", (now - window,))
            recent = db().all(
                "SELECT ts, key_id, team_id, requested_model, served_model, route_reason, cost_nanos, latency_ms,"
                " status FROM ledger ORDER BY ts DESC LIMIT 25")
            total = sum(int(r[1]) for r in mix)
            return {
                "window_seconds": window, "requests": total,
                "mix": [{"model": r[0], "requests": int(r[1]), "share": int(r[1]) / total if total else 0.0,
                         "cost_nanos": int(r[2]), "frontier_cost_nanos": int(r[3]),
                         "color": colour(r[0], palette_of)} for r in mix],
                "recent": [{"ts": r[0], "key_id": r[1], "team_id": r[2], "requested": r[3], "served": r[4],
                            "reason": r[5], "cost_nanos": int(r[6] or 0), "latency_ms": r[7], "status": r[8]}
                           for r in recent],
            }

        return locked(run)

    async def live(request: Request) -> Response:
        data = await run_in_threadpool(_live)
        return page(request, "live.html", live=data, live_json=_js(data))

    async def live_api(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(_live))

    async def report_api(request: Request) -> Response:
        from thrifty.reports.render import to_json

        report, _form, _options = await run_in_threadpool(_report, request.query_params)
        return Response(to_json(report), media_type="application/json")

    async def requests_page(request: Request) -> Response:
        from urllib.parse import urlencode

        from thrifty.spend.requests import RequestQuery, RequestQueryError, list_requests

        q = request.query_params
        form = {k: (q.get(k) or "").strip() for k in ("team", "key", "model", "status", "since", "until")}
        try:
            status = int(form["status"]) if form["status"] else None
        except ValueError:
            raise BadInput(f"status must be an HTTP status such as 200 or 429, not {form['status']!r}") from None
        until = _date(form["until"], "until", 0) + (DAY if len(form["until"]) == 10 else 0) if form["until"] else None
        query = RequestQuery(team=form["team"] or None, key=form["key"] or None, model=form["model"] or None,
                             status=status, since=_date(form["since"], "since", 0) if form["since"] else None,
                             until=until, limit=50, cursor=q.get("cursor") or None)
        spend.flush()
        try:
            data = await run_in_threadpool(locked, lambda: list_requests(db(), query))
        except RequestQueryError as exc:
            raise BadInput(str(exc)) from None
        rows = [{**r, "cost_nanos": round(float(r["cost_usd"]) * 1e9)} for r in data["data"]]
        nxt = None
        if data["next_cursor"]:
            nxt = f"{base(request)}/requests?" + urlencode({**{k: v for k, v in form.items() if v},
                                                            "cursor": data["next_cursor"]})
        return page(request, "requests.html", rows=rows, form=form, next_url=nxt)

    async def router_page(request: Request) -> Response:
        from thrifty.errors import UsageError
        from thrifty.router.status import LEVEL, status

        q = request.query_params
        team = (q.get("team") or "").strip() or None
        days_text = (q.get("days") or "30").strip()
        try:
            days = float(days_text)
        except ValueError:
            days = -1.0
        if not 0 < days <= 36_500:
            raise BadInput(f"days must be a positive number of days, not {days_text!r}")
        spend.flush()

        def run() -> tuple[Any, list[str]]:
            teams = [r[0] for r in db().all("SELECT id FROM teams ORDER BY id")]
            return status(db(), team=team, days=days, now=time.time()), teams

        try:
            s, teams = await run_in_threadpool(locked, run)
        except UsageError as exc:
            raise BadInput(str(exc)) from None
        return page(request, "router.html", rs=s, teams=teams, level=LEVEL,
                    form={"team": team or "", "days": days_text})

    def _session(request: Request) -> str | None:
        token = request.cookies.get(session.COOKIE)
        return token if token and session.verify(state["secret"], token) is not None else None

    async def manage_page(request: Request, status: int = 200, **ctx: Any) -> Response:
        from thrifty.reports.manage import csrf_token
        from thrifty.spend import admin_ops

        def run() -> dict[str, Any]:
            return {"keys": admin_ops.list_keys(db()), "teams": admin_ops.list_teams(db()),
                    "budgets": admin_ops.list_budgets(db())}

        lists = await run_in_threadpool(locked, run)
        token = _session(request)
        csrf = csrf_token(state["secret"], token) if token else ""
        return page(request, "manage.html", status, csrf=csrf, message=ctx.get("message"),
                    secret=ctx.get("secret"), error=ctx.get("error"), **lists)

    def manage_action(action: str) -> Callable:
        async def handler(request: Request) -> Response:
            from thrifty.reports.manage import ActionError, csrf_ok, perform

            raw = (await request.body()).decode("utf-8", "replace")
            form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            await run_in_threadpool(locked, lambda: None)
            if not csrf_ok(state["secret"], _session(request), form, request.headers.get("origin"),
                           request.headers.get("host")):
                return error_response(403, "This form is stale or came from another site; reload the page.",
                                      "permission_error", "csrf_failed")
            target = request.path_params.get("target")
            try:
                message, secret = await run_in_threadpool(locked, lambda: perform(db(), action, form, target))
            except ActionError as exc:
                return await manage_page(request, 400, error=str(exc))
            spend.reload()  # the gateway serves the change now, as after the admin API
            return await manage_page(request, message=message, secret=secret)

        return handler

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return error_response(status, f"No dashboard page {request.url.path}.", "invalid_request_error",
                              "not_found" if status == 404 else "method_not_allowed")

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(500, "Internal error in the dashboard; it has been logged.", "api_error",
                              "internal_error")

    routes = [
        Route("/", guarded(overview), methods=["GET"]),
        Route("/budgets", guarded(budgets), methods=["GET"]),
        Route("/keys", guarded(keys), methods=["GET"]),
        Route("/live", guarded(live), methods=["GET"]),
        Route("/requests", guarded(requests_page), methods=["GET"]),
        Route("/router", guarded(router_page), methods=["GET"]),
        Route("/manage", guarded(manage_page), methods=["GET"]),
        Route("/manage/team", guarded(manage_action("team")), methods=["POST"]),
        Route("/manage/key", guarded(manage_action("key")), methods=["POST"]),
        Route("/manage/key/{target}/revoke", guarded(manage_action("revoke")), methods=["POST"]),
        Route("/manage/budget", guarded(manage_action("budget")), methods=["POST"]),
        Route("/manage/budget/{target}/delete", guarded(manage_action("delete-budget")), methods=["POST"]),
        Route("/api/live", guarded(live_api, api=True), methods=["GET"]),
        Route("/api/report", guarded(report_api, api=True), methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST", "GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: server_error})


def mounts(spend: Any, config: Any = None) -> dict[str, Any]:
    """The gateway's mounts for reports: the dashboard and the feedback endpoint."""
    if not hasattr(spend, "db_url"):
        return {}  # no ledger (spend control off): nothing to show or rate
    from thrifty.reports.feedback import feedback_app

    return {"/ui": full_path(create_ui_app(spend, config)), "/v1/feedback": feedback_app(spend)}


def full_path(app: Any) -> Any:
    """Adapt to the gateway's mounting, which strips the prefix from ``path``: Starlette wants the
    full path with ``root_path`` set (it strips it itself, also for nested mounts like /static)."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        root = scope.get("root_path", "")
        if root and scope.get("type") == "http" and not scope["path"].startswith(root + "/"):
            scope = dict(scope, path=root + scope["path"])
        await app(scope, receive, send)

    return wrapped
