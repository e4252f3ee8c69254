"""The explorer's web app: a Starlette ASGI app (JSON + PNG endpoints, one static page) served by uvicorn.

Endpoints (JSON bodies are the page's parameters, `_state.DEFAULTS`):

| route | does |
|---|---|
| `GET /` | the page (`index.html`: plain HTML + JS, no build step) |
| `GET /api/schema` | controls: shape classes and their sliders, materials, start values, data file |
| `POST /api/render` | pattern (log-scale PNG), axes, radial profile, timing; with data: data, residual |
| `POST /api/particle` | surface points of the particle in the beam frame (for the 3-D view) |
| `POST /api/export/toml` | the state as a `diffscat simulate` config (download) |
| `POST /api/export/png` | a PNG figure of the state (download) |
| `POST /api/export/npy` | the pattern shown (dsigma/dOmega or photons) as a NumPy .npy array |
| `POST /api/fit/start`, `GET /api/fit/status`, `POST /api/fit/stop` | the background fit and its loss curve |

A bad value answers 400 with `{"ok": false, "error": message}`; an unexpected failure answers 500 with a
one-line message (the traceback goes to the server's log, never to the page). Bodies above `MAX_BODY` bytes
are refused (413). Simulations run in worker threads, so the event loop (and the page) never blocks.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading

from ._state import ExploreError, Explorer

__all__ = ["create_app", "serve", "bind_socket", "make_server"]

MAX_BODY = 64 * 1024
log = logging.getLogger("diffscat.explore")
_PAGE = os.path.join(os.path.dirname(__file__), "index.html")


def create_app(explorer: Explorer):
    """The Starlette app serving `explorer`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    def fail(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"ok": False, "error": msg}, status_code=status)

    async def body(request) -> dict:
        n = request.headers.get("content-length")
        if n is not None and (not n.isdigit() or int(n) > MAX_BODY):
            raise _TooLarge()
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise _TooLarge()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExploreError(f"the request body is not valid JSON: {e}") from None

    def guarded(fn):
        async def endpoint(request):
            try:
                return await fn(request)
            except _TooLarge:
                return fail(413, f"request body larger than {MAX_BODY} bytes")
            except (ExploreError, ValueError, TypeError, KeyError) as e:
                return fail(400, str(e).splitlines()[0] if str(e) else type(e).__name__)
            except Exception as e:  # an unexpected failure: one line to the page, the traceback to the log
                log.exception("explore: %s failed", request.url.path)
                return fail(
                    500, f"internal error ({type(e).__name__}): {str(e).splitlines()[0] if str(e) else ''}"
                )

        return endpoint

    async def page(request):
        return FileResponse(_PAGE, media_type="text/html")

    async def schema(request):
        return JSONResponse(explorer.schema())

    async def render(request):
        p = await body(request)
        return JSONResponse(await run_in_threadpool(explorer.render, p))

    async def particle(request):
        p = await body(request)
        return JSONResponse(await run_in_threadpool(explorer.particle, p))

    async def export_toml(request):
        p = await body(request)
        text = await run_in_threadpool(explorer.toml, p)
        return Response(
            text,
            media_type="application/toml",
            headers={"Content-Disposition": 'attachment; filename="explore.toml"'},
        )

    async def export_png(request):
        p = await body(request)
        png = await run_in_threadpool(explorer.figure_png, p)
        return Response(
            png, media_type="image/png", headers={"Content-Disposition": 'attachment; filename="explore.png"'}
        )

    async def export_npy(request):
        p = await body(request)
        npy = await run_in_threadpool(explorer.pattern_npy, p)
        return Response(
            npy,
            media_type="application/octet-stream",
            headers={"Content-Disposition": 'attachment; filename="explore.npy"'},
        )

    async def fit_start(request):
        p = await body(request)
        steps = p.pop("max_steps", 60) if isinstance(p, dict) else 60
        return JSONResponse(await run_in_threadpool(explorer.fit.start, p, steps))

    async def fit_status(request):
        return JSONResponse(explorer.fit.status())

    async def fit_stop(request):
        explorer.fit.stop()
        return JSONResponse(explorer.fit.status())

    routes = [
        Route("/", guarded(page)),
        Route("/api/schema", guarded(schema)),
        Route("/api/render", guarded(render), methods=["POST"]),
        Route("/api/particle", guarded(particle), methods=["POST"]),
        Route("/api/export/toml", guarded(export_toml), methods=["POST"]),
        Route("/api/export/png", guarded(export_png), methods=["POST"]),
        Route("/api/export/npy", guarded(export_npy), methods=["POST"]),
        Route("/api/fit/start", guarded(fit_start), methods=["POST"]),
        Route("/api/fit/status", guarded(fit_status)),
        Route("/api/fit/stop", guarded(fit_stop), methods=["POST"]),
    ]
    return Starlette(routes=routes)


class _TooLarge(Exception):
    pass


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one (read it from `getsockname()`)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    s.listen(64)
    return s


def make_server(explorer: Explorer):
    """A uvicorn server for `explorer` with bounded work: at most 32 concurrent connections, 5 s keep-alive."""
    import uvicorn

    cfg = uvicorn.Config(
        create_app(explorer),
        log_level="warning",
        limit_concurrency=32,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=2,
        lifespan="off",
    )
    return uvicorn.Server(cfg)


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = True) -> int:
    """Serve until Ctrl-C (SIGINT) or SIGTERM; prints the address. Returns 0 after a clean stop."""
    sock = bind_socket(host, port)
    real_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{real_port}/"
    print(f"diffscat explore: serving on {url} (Ctrl-C stops)", flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(0.5, lambda: webbrowser.open(url)).start()
    server = make_server(explorer)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the captured SIGINT after its graceful shutdown
        pass
    finally:
        explorer.fit.stop()
        sock.close()
    print("diffscat explore: stopped", file=sys.stderr, flush=True)
    return 0
