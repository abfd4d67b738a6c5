"""The station page's routes (Starlette). `build_app(..., extra_routes=...)` serves more routes on the same
server (e.g. a Prometheus /metrics module); they keep their own access rules (the page's guard wraps its own
routes only)."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
from datetime import datetime
from pathlib import Path

import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edge.components import inspecting, reasons
from edge.web.auth import SESSION_COOKIE, Guard
from edge.web.bodies import BoundedBodies

logger = logging.getLogger("lineguard")

STATIC = Path(__file__).parent / "static"
SSE_WAIT_S = 5.0  # a comment line at least this often keeps proxies from closing an idle stream
FAILED_LOGIN_DELAY_S = 1.0
MAX_BODY_BYTES = 4096
MASK_BODY_BYTES = 48 * 1024  # POST /api/mask and /api/mask/preview: up to 32 polygons of 64 points
MASK_PATHS = ("/api/mask", "/api/mask/preview")
REVIEW_LIMIT = 500
CLIENT_HEADER = "X-Lineguard-Client"  # "cli" from `lineguard threshold` (edge.web.client)
FILTERS = {"all": None, "fail": "fail", "unscorable": "unscorable", "pass": "pass"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


def build_app(station, guard: Guard, live_fps: float, extra_routes=(), metrics=None) -> Starlette:
    """The page's app: ``station`` is edge.web.station.StationWeb (or anything with its methods); ``extra_routes``
    (Starlette routes) are served beside the page's own; ``metrics`` (edge.publish.metrics.StationMetrics) adds
    GET /metrics, a read like the page's others."""
    async def guarded(request: Request, handler, change: bool = False) -> Response:
        refusal = guard.host_refusal(request.headers.get("host", ""))
        if refusal is not None:
            return _error(421, refusal)
        token, session = guard.session(request.cookies.get(SESSION_COOKIE))
        if change:
            refusal = guard.change_refusal(request.headers, request.url.scheme, session)
            if refusal is None and handler is not login and not guard.may_change(session):
                refusal = "the page password is needed for changes"
            if refusal is not None:
                logger.warning("web: %s %s refused: %s", request.method, request.url.path, refusal)
                return _error(403, refusal)
        elif handler not in (page, session_info) and not guard.may_read(session):
            return _error(401, "the page password is needed (web.public_reads is false)")
        response = await handler(request, session)
        if request.cookies.get(SESSION_COOKIE) != token:
            response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/")
        response.headers.update(SECURITY_HEADERS)
        return response

    def route(path: str, handler, methods=("GET",)) -> Route:
        async def endpoint(request: Request) -> Response:
            return await guarded(request, handler, change=request.method == "POST")
        return Route(path, endpoint, methods=list(methods))

    async def page(request, session) -> Response:
        return FileResponse(STATIC / "index.html")

    async def healthz(request: Request) -> Response:
        if not station.inspecting():
            return JSONResponse({"status": "starting", "reasons": ["starting"]}, status_code=503)
        state, parts = station.state(), (await run_in_threadpool(station.stats)).get("components", {})
        # A broker outage is not a 503: the station still inspects and the outbox holds the verdicts.
        ok = inspecting(parts)
        return JSONResponse({"status": "inspecting" if ok else "not inspecting", "reasons": reasons(parts),
                             "components": parts, "source": state["source"], "model": state["model"]},
                            status_code=200 if ok else 503)

    async def session_info(request, session) -> Response:
        return JSONResponse({"csrf": session.csrf, "password_required": guard.password_required,
                             "authenticated": session.authenticated, "may_read": guard.may_read(session),
                             "may_change": guard.may_change(session)})

    async def login(request, session) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("password"), str):
            return _error(400, "send {\"password\": \"...\"}")
        source = request.client.host if request.client else "?"
        wait_s = guard.throttle.admit(source)  # counted before it is evaluated: parallel guesses wait too
        if wait_s is not None:
            return _error(429, f"too many wrong passwords: try again in {wait_s:.0f} s",
                          {"Retry-After": f"{wait_s:.0f}"})
        if guard.login(session, body["password"]):
            guard.throttle.succeeded(source)
            return JSONResponse({"ok": True})
        logger.warning("web: wrong page password from %s", source)
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)  # slows guessing; the server's other requests go on
        return _error(403, "wrong password")

    async def state(request, session) -> Response:
        return JSONResponse(await run_in_threadpool(station.state))

    async def stats(request, session) -> Response:
        return JSONResponse(await run_in_threadpool(station.stats))

    async def review(request, session) -> Response:
        try:
            items = await run_in_threadpool(station.review_verdicts, request.query_params)
        except ValueError as exc:
            return _error(400, str(exc))
        held, evidence = station.held(), await run_in_threadpool(station.evidence_seqs)
        for item in items:
            item["held"], item["evidence"] = item["seq"] in held, item["seq"] in evidence
        return JSONResponse({"verdicts": items})

    async def scores(request, session) -> Response:
        recent = [{"seq": v["seq"], "score": v["score"], "verdict": v["verdict"], "image": v["image"]}
                  for v in station.recent() if v["verdict"] != "unscorable"]
        return JSONResponse({"recent": recent, "calibration": station.calibration_scores(),
                             "state": await run_in_threadpool(station.state)})

    async def evidence(request, session) -> Response:
        kind, seq = request.path_params["kind"], request.path_params["seq"]
        path = await run_in_threadpool(station.evidence_file, seq, kind) if kind in ("frame", "heat") else None
        return FileResponse(path, media_type="image/jpeg") if path else _error(404, "no evidence for this seq")

    async def live_jpeg(request, session) -> Response:
        jpeg = await run_in_threadpool(station.sink.live.picture)
        return Response(jpeg, media_type="image/jpeg") if jpeg else _error(404, "no picture yet")

    async def live_events(request, session) -> Response:
        live, period_s = station.sink.live, 1.0 / live_fps
        if not viewers.take():
            return _error(503, f"{viewers.limit} live views are open, as many as web.max_live_viewers allows: "
                               "close one and try again")

        async def events():
            version = 0
            while not live.closed and not await request.is_disconnected():
                # Waits on threads of their own: viewers never hold the threads the API answers with.
                newer = await anyio.to_thread.run_sync(live.wait_newer, version, SSE_WAIT_S,
                                                       limiter=viewers.threads)
                if newer == version:
                    yield ": waiting\n\n"
                    continue
                version = newer
                yield f"id: {version}\ndata: {json.dumps({**live.meta, 'version': version})}\n\n"
                await asyncio.sleep(period_s)  # web.live_fps: the newest verdict after the pause is shown next
        return ViewerStream(viewers, events(), media_type="text/event-stream")

    def command(name: str, fields: tuple[str, ...]):
        async def handler(request, session) -> Response:
            body = await _json_body(request, MASK_BODY_BYTES if name == "mask" else MAX_BODY_BYTES) if fields else {}
            if not isinstance(body, dict):
                return _error(400, "send a JSON object")
            reply = await run_in_threadpool(station.command, name, {k: body[k] for k in fields if k in body},
                                            _origin(request, session))
            logger.info("web: %s %s", name, "applied" if reply["ok"] else f"refused: {reply['reason']}")
            return JSONResponse(reply, status_code=200 if reply["ok"] else 409)
        return handler

    async def mask_preview(request, session) -> Response:
        body = await _json_body(request, MASK_BODY_BYTES)
        if not isinstance(body, dict) or not isinstance(body.get("seq", 0), int):
            return _error(400, "send {\"polygons\": [[[x, y], ...], ...], \"seq\": <the frame shown>}")
        try:
            rows = await run_in_threadpool(station.mask_preview, body.get("polygons"), body.get("seq"))
        except ValueError as exc:
            return _error(400, str(exc))
        return JSONResponse({"ok": True, "frames": rows})

    async def threshold_audit(request, session) -> Response:
        try:
            return JSONResponse({"changes": await run_in_threadpool(station.threshold_audit)})
        except sqlite3.Error as exc:
            return _error(503, f"the threshold audit cannot be read: {exc}")

    async def prometheus(request, session) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    viewers = ViewerSlots(guard.web.max_live_viewers)
    routes = [
        *([route("/metrics", prometheus)] if metrics is not None else []),
        route("/", page), Route("/healthz", healthz), route("/api/session", session_info),
        route("/api/login", login, ("POST",)), route("/api/state", state), route("/api/stats", stats),
        route("/api/review", review), route("/api/scores", scores),
        route("/api/evidence/{seq:int}/{kind}", evidence), route("/api/live.jpg", live_jpeg),
        route("/api/live/events", live_events),
        route("/api/threshold", command("threshold", ("threshold", "why")), ("POST",)),
        route("/api/threshold/reset", command("threshold_reset", ("why",)), ("POST",)),
        route("/api/threshold/audit", threshold_audit),
        route("/api/mask", command("mask", ("polygons", "why")), ("POST",)),
        route("/api/mask/reset", command("mask_reset", ("why",)), ("POST",)),
        route("/api/mask/preview", mask_preview, ("POST",)),
        route("/api/feedback", command("feedback", ("seq", "label", "defect")), ("POST",)),
        route("/api/reload", command("reload", ()), ("POST",)),
        route("/api/shadow", command("shadow", ("model", "stop")), ("POST",)),
        route("/api/promote", command("promote", ()), ("POST",)),
        route("/api/rollback", command("rollback", ()), ("POST",)),
        *extra_routes,
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BoundedBodies, max_bytes=MAX_BODY_BYTES,
                                                           headers=SECURITY_HEADERS,
                                                           larger={path: MASK_BODY_BYTES for path in MASK_PATHS})])


class ViewerSlots:
    """Live views open at once (web.max_live_viewers), and the threads their waits run on."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0  # changed on the event loop's thread only
        self.threads = anyio.CapacityLimiter(limit)

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


class ViewerStream(StreamingResponse):
    """A live view that gives its slot back however it ends (closed page, error, server stop)."""

    def __init__(self, slots: ViewerSlots, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slots = slots

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slots.give_back()


def _origin(request: Request, session) -> str:
    """Who sent a change, as the threshold audit names it: `lineguard` commands say so in a header (they pass the
    same access rules as the page); otherwise the page, by address, and whether it logged in with the password."""
    if request.headers.get(CLIENT_HEADER) == "cli":
        return "cli"
    address = request.client.host if request.client else "?"
    return f"page {address}" + (" (logged in)" if session.authenticated else "")


def review_query(query) -> tuple[str | None, float | None, float | None, int]:
    """The Review list's query: verdict filter (None: all), time range (ISO 8601 `since`/`until`) and `limit`."""
    wanted = FILTERS.get(query.get("filter", "fail"), "?")
    if wanted == "?":
        raise ValueError(f"filter must be one of {', '.join(FILTERS)}")
    since, until = _time(query.get("since")), _time(query.get("until"))
    limit = int(query.get("limit", REVIEW_LIMIT)) if query.get("limit", "").isdigit() else REVIEW_LIMIT
    return wanted, since, until, limit


def select_verdicts(verdicts: list[dict], query) -> list[dict]:
    """Newest first, by verdict filter and time range (ISO 8601 `since`/`until`), at most `limit`."""
    wanted, since, until, limit = review_query(query)
    chosen = []
    for verdict in reversed(verdicts):
        ts = _time(verdict["ts"])
        if (wanted is None or verdict["verdict"] == wanted) and (since is None or ts >= since) \
                and (until is None or ts <= until):
            chosen.append(dict(verdict))
        if len(chosen) >= limit:
            break
    return chosen


def _time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"time {text[:40]!r} needs a time zone (Z or +hh:mm)")
    value = moment.timestamp()
    return value if math.isfinite(value) else None


async def _json_body(request: Request, limit: int = MAX_BODY_BYTES):
    body = await request.body()
    if len(body) > limit:
        return None
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return None


def _error(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"ok": False, "reason": reason}, status_code=status, headers={**SECURITY_HEADERS,
                                                                                   **(headers or {})})
