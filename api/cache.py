"""Answers of a finished experiment never change (those about all its spaces only grow, when an embedding
is uploaded: their ETag names its revision): they carry an ETag and Cache-Control, and a request that
already holds the answer (If-None-Match) gets 304 with no body.

An answer for an experiment named in the URL may be kept for a day; one for "the latest succeeded
experiment" (no experiment given) must be revalidated, since a newer experiment may succeed meanwhile
(its ETag names the experiment, so a revalidation is a 304 until then).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from fastapi import Request, Response

VERSION = "2"  # bump when an answer's representation changes (2: the metric tables say their split)


def etag(request: Request, experiment_id: int, revision: int = 0) -> str:
    query = "&".join(sorted(request.url.query.split("&")))
    digest = hashlib.sha1(f"{VERSION}|{request.url.path}|{query}".encode()).hexdigest()[:20]
    return f'"e{experiment_id}r{revision}-{digest}"'


def _headers(request: Request, tag: str, keep: bool) -> dict[str, str]:
    private = bool(request.app.state.settings.read_key)  # behind a key: no shared cache may keep it
    scope = "private" if private else "public"
    return {"ETag": tag, "Cache-Control": f"{scope}, max-age=86400, immutable" if keep else f"{scope}, no-cache"}


def immutable(request: Request, experiment_id: int, explicit: bool, make: Callable[[], Response], *,
              revision: int = 0, changes: bool = False) -> Response:
    """The answer ``make`` builds, with its ETag and Cache-Control; 304 when the client holds it already.
    ``changes``: an answer about all of an experiment's spaces (its metric tables, a plot of every model),
    which an uploaded embedding extends: revalidated every time, its ETag naming the experiment's revision."""
    tag = etag(request, experiment_id, revision)
    headers = _headers(request, tag, explicit and not changes)
    wanted = request.headers.get("if-none-match", "")
    if tag in [t.strip() for t in wanted.split(",")] or wanted.strip() == "*":
        return Response(status_code=304, headers=headers)
    response = make()
    response.headers.update(headers)
    return response


def json_response(model) -> Response:
    """A pydantic model as a JSON response (the shape FastAPI would write)."""
    return Response(model.model_dump_json(), media_type="application/json")
