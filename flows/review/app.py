"""The review web app (FastAPI, server-rendered pages, local assets only) and its server.

    app = create_app(session, default_reviewer="alice", report=lambda: {...})
    serve(app, host="127.0.0.1", port=0, banner=print)   # blocks until Ctrl-C

Pages: /next (the next open pair of the queue, honouring ?round=&strategy=&kind=&reason=&status=),
/pair/ID, /queue, /report; POST /decide and /reviewer. Every form carries a per-server token
(another site cannot post decisions), the Host header must be the bound name (no DNS
rebinding), and a Content-Security-Policy allows only this server's own script and style, so
even text that slipped past the renderer could not run.
"""
from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from flows.review.pages import decided_label, options, pair_view, queue_rows, render
from flows.review.session import Filters, ReviewSession

STATIC = Path(__file__).resolve().parent / "static"
REVIEWER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
COOKIE = "prefmill_reviewer"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def check_reviewer(name: str) -> str:
    if not REVIEWER_RE.match(name or ""):
        raise ValueError(f"reviewer name {name!r} is not allowed; use 1-64 letters, digits, '_', '.', '@' or '-'")
    return name


def create_app(session: ReviewSession, *, default_reviewer: str, report: Callable[[], str],
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """`report` returns the agreement report as text; allowed_hosts None = any Host header."""
    check_reviewer(default_reviewer)
    token = secrets.token_urlsafe(24)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.decisions = 0
    opts = options(session)            # the queue is fixed for the server's life: compute the filter values once
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def headers(request: Request, call_next):  # noqa: ANN001, ANN202 - starlette middleware signature
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        if not request.url.path.startswith("/static/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    def who(request: Request) -> str:
        name = request.cookies.get(COOKIE, "")
        return name if REVIEWER_RE.match(name) else default_reviewer

    def filters(request: Request) -> Filters:
        p = request.query_params
        return Filters(**{k: p.get(k, "")[:100] for k in ("round", "strategy", "kind", "reason", "status")})

    def page(template: str, request: Request, f: Filters, status: int = 200, **ctx: Any) -> HTMLResponse:
        reviewer = who(request)
        html = render(template, reviewer=reviewer, token=token, q=f.query(), f=f, table=str(session.queue.ref),
                      progress=session.progress(reviewer, f), options=opts, notes=session.queue.notes,
                      **ctx)
        return HTMLResponse(html, status_code=status)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "pairs": str(session.queue.ref), "queue": len(session.comparisons)})

    @app.get("/")
    def index(request: Request) -> RedirectResponse:
        return RedirectResponse("/next?" + filters(request).query(), status_code=303)

    @app.get("/next")
    def next_pair(request: Request) -> Response:
        f = filters(request)
        pos = session.next_for(who(request), f)
        if pos is None:
            return page("done.html", request, f)
        return RedirectResponse(f"/pair/{session.pages[pos]}?{f.query()}", status_code=303)

    @app.get("/pair/{pair_id}")
    def pair(pair_id: str, request: Request) -> Response:
        f, reviewer = filters(request), who(request)
        pos = session.position.get(pair_id)
        if pos is None:
            return page("done.html", request, f, status=404, missing=pair_id)
        decided = session.decided(reviewer, pos)
        if decided is None:
            session.lease(reviewer, pos)
        view = pair_view(session, pos, reviewer)
        return page("pair.html", request, f, p=view,
                    decided=decided_label(decided, session.shown_first(pos, reviewer)))

    @app.post("/decide")
    def decide(request: Request, pair_id: str = Form(...), choice: str = Form(...), note: str = Form(""),
               q: str = Form(""), form_token: str = Form(..., alias="token")) -> Response:
        if not secrets.compare_digest(form_token, token):
            return HTMLResponse("stale or foreign form: reload the page", status_code=403)
        try:
            written, _ = session.decide(who(request), pair_id, choice, note)
        except ValueError as e:
            return HTMLResponse(str(e), status_code=400)
        app.state.decisions += int(written)
        return RedirectResponse("/next?" + Filters(**_parse_q(q)).query(), status_code=303)

    @app.post("/reviewer")
    def set_reviewer(name: str = Form(...), form_token: str = Form(..., alias="token")) -> Response:
        if not secrets.compare_digest(form_token, token):
            return HTMLResponse("stale or foreign form: reload the page", status_code=403)
        try:
            check_reviewer(name.strip())
        except ValueError as e:
            return HTMLResponse(str(e), status_code=400)
        resp = RedirectResponse("/next", status_code=303)
        resp.set_cookie(COOKIE, name.strip(), httponly=True, samesite="strict")
        return resp

    @app.get("/queue")
    def queue(request: Request) -> HTMLResponse:
        f = filters(request)
        return page("queue.html", request, f, rows=queue_rows(session, who(request), f))

    @app.get("/report")
    def report_page(request: Request) -> HTMLResponse:
        return page("report.html", request, filters(request), report=report())

    return app


def _parse_q(q: str) -> dict[str, str]:
    from urllib.parse import parse_qs
    allowed = ("round", "strategy", "kind", "reason", "status")
    return {k: v[0][:100] for k, v in parse_qs(q).items() if k in allowed and v}


def serve(app: FastAPI, *, host: str, port: int, banner: Callable[[str], None]) -> None:
    """Listen on host:port (0 = any free port), call banner(url), serve until Ctrl-C."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        from flows.cli import UserError
        raise UserError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e}); pass another "
                        "--port (0 = any free port) or --host") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    banner(f"http://{shown}:{bound}/")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:       # uvicorn re-raises the Ctrl-C it shut down on; the caller records lineage
        pass
    finally:
        sock.close()
