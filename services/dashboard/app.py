"""The dashboard's HTTP app: the pages (static files), their JSON API and the live round feed (SSE).

Read-only by design: nothing here changes a run. With a token configured, every request but
`/healthz` needs it, as a bearer token (API clients) or as the password of HTTP basic auth (browsers,
which then send it with the page's event stream too).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from sse_starlette import EventSourceResponse

from mpo.services.dashboard.sources import DashboardSource, UnknownRun
from mpo.services.dashboard.views import pair_image, pair_page, round_row, rounds_csv, run_row
from mpo.v1 import common_pb2

STATIC_DIR = Path(__file__).parent / "static"
PAIR_SOURCES = [name for name in common_pb2.PairSource.keys() if name != "PAIR_SOURCE_UNSPECIFIED"]  # noqa: SIM118
MAX_PAIRS_PER_PAGE = 200


class BadParameter(ValueError):
    """A query parameter out of range; answered 400 with the parameter's name."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _authorized(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(credentials.encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


def create_app(source: DashboardSource, *, token: str | None = None) -> FastAPI:
    app = FastAPI(title="OnlineMPO dashboard", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if token and request.url.path != "/healthz" and not _authorized(request.headers.get("authorization"), token):
            return _error(
                401,
                "missing or invalid credentials: send 'Authorization: Bearer <token>' or basic auth with the token "
                "as password",
                {"WWW-Authenticate": 'Basic realm="OnlineMPO dashboard"'},
            )
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{problem['loc'][-1]}: {problem['msg']}" for problem in error.errors())
        return _error(400, problems)

    @app.exception_handler(BadParameter)
    async def bad_parameter(request: Request, error: BadParameter) -> JSONResponse:
        return _error(400, str(error))

    @app.exception_handler(UnknownRun)
    async def unknown_run(request: Request, error: UnknownRun) -> JSONResponse:
        return _error(404, f"run_id: no run {error.args[0]!r} in the store")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/runs")
    async def runs() -> dict[str, Any]:
        return {"runs": [run_row(run) for run in source.runs()]}

    @app.get("/api/runs/{run_id}")
    async def run(run_id: str) -> dict[str, Any]:
        found = source.run(run_id)
        return {"run": run_row(found), "config_yaml": found.config_yaml}

    @app.get("/api/runs/{run_id}/rounds")
    async def rounds(run_id: str, from_round: int = Query(0, ge=0)) -> dict[str, Any]:
        source.run(run_id)
        return {"rounds": [round_row(record) for record in source.store.round_records(run_id, from_round=from_round)]}

    @app.get("/api/runs/{run_id}/rounds.csv")
    async def rounds_as_csv(run_id: str) -> Response:
        source.run(run_id)
        rows = [round_row(record) for record in source.store.round_records(run_id)]
        return Response(
            rounds_csv(rows),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{run_id}-rounds.csv"'},
        )

    @app.get("/api/runs/{run_id}/pairs")
    async def pairs(
        run_id: str,
        round: int | None = Query(None, ge=1),
        task: str | None = None,
        source_name: str | None = Query(None, alias="source"),
        offset: int = Query(0, ge=0),
        limit: int = Query(20, ge=1, le=MAX_PAIRS_PER_PAGE),
    ) -> dict[str, Any]:
        source.run(run_id)
        if source_name is not None and source_name not in PAIR_SOURCES:
            raise BadParameter(f"source: unknown pair source {source_name!r}; one of {', '.join(PAIR_SOURCES)}")
        committed = source.store.committed_rounds(run_id)
        shards = [source.store.shard_path(run_id, index) for index in committed if round is None or index == round]
        page, total = pair_page(shards, task=task, source=source_name, offset=offset, limit=limit)
        return {
            "pairs": page,
            "total": total,
            "rounds": committed,
            "sources": PAIR_SOURCES,
        }

    @app.get("/api/runs/{run_id}/pairs/{pair_id}/images/{index}")
    async def image(run_id: str, pair_id: str, index: int) -> Response:
        source.run(run_id)
        round_index = source.store.pair_round(run_id, pair_id)
        data = None if round_index is None else pair_image(source.store.shard_path(run_id, round_index), pair_id, index)
        if data is None:
            return _error(404, f"pair_id/index: run {run_id!r} has no image {index} of pair {pair_id!r}")
        with Image.open(io.BytesIO(data)) as decoded:
            media_type = Image.MIME.get(decoded.format or "", "application/octet-stream")
        return Response(data, media_type=media_type, headers={"Cache-Control": "max-age=86400, immutable"})

    @app.get("/api/runs/{run_id}/events")
    async def events(run_id: str, from_round: int = Query(0, ge=0)) -> EventSourceResponse:
        """Each round as it is stored (from `from_round`), then `end` with the run once it is over."""
        source.run(run_id)
        feed = source.watch(run_id, from_round)

        async def stream() -> AsyncIterator[dict[str, str]]:
            async for record in feed:
                yield {"event": "round", "data": json.dumps(round_row(record))}
                yield {"event": "run", "data": json.dumps(run_row(source.run(run_id)))}
            yield {"event": "end", "data": json.dumps(run_row(source.run(run_id)))}

        return EventSourceResponse(stream())

    @app.get("/api/services")
    async def services() -> dict[str, Any]:
        return {"services": await source.services()}

    return app
