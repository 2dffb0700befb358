"""One error shape for every failure: {"code": "...", "message": "..."} with the right status."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.study.config import error_text

log = logging.getLogger(__name__)

STATUS = {"unauthorized": 401, "not_found": 404, "conflict": 409, "too_large": 413, "invalid": 422,
          "too_many": 429, "failed": 500, "unavailable": 503}


class ErrorOut(BaseModel):
    code: str  # machine-readable: unauthorized, not_found, conflict, invalid, too_many, unavailable, ...
    message: str  # names the field or the id


# Every route documents the error shape it may answer with (the 422 replaces FastAPI's default one).
ERROR_RESPONSES = {code: {"model": ErrorOut, "description": what} for code, what in (
    (401, "a key is set and the request did not carry it (Authorization: Bearer <key>)"),
    (404, "unknown experiment or sample id"), (409, "not computed yet, or in the wrong state"),
    (413, "request body too large"), (422, "invalid input: the message names the field"),
    (429, "too many experiments pending: try again after Retry-After seconds"),
    (503, "a service the request needs is unreachable"))}


class AppError(Exception):
    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers


def not_found(message: str) -> AppError:
    return AppError("not_found", message)


def conflict(message: str) -> AppError:
    return AppError("conflict", message)


def invalid(message: str) -> AppError:
    return AppError("invalid", message)


def unauthorized(message: str) -> AppError:
    return AppError("unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="aeknn"'})


def _json(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    from common.secrets import scrub

    return JSONResponse(status_code=status, content={"code": code, "message": scrub(message)}, headers=headers)


def install(app: FastAPI) -> None:
    from common.errors import Invalid, NotFound, NotReady
    from common.store.migrate import SchemaError

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _json(404, "not_found", str(exc))

    @app.exception_handler(NotReady)
    async def _not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return _json(409, "conflict", str(exc))

    @app.exception_handler(Invalid)
    async def _invalid(_: Request, exc: Invalid) -> JSONResponse:
        return _json(422, "invalid", str(exc))

    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return _json(STATUS.get(exc.code, 400), exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(422, "invalid", "; ".join(dict.fromkeys(describe_validation(e) for e in exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of every route at this path, not the first route's alone
            headers["Allow"] = allowed_methods(request)
        return _json(exc.status_code, f"http_{exc.status_code}", str(exc.detail), headers or None)

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        # a dropped connection is invalidated by the pool: the next request gets a fresh one
        log.warning("database error: %s", exc)
        return _json(503, "unavailable", f"the database is unreachable or busy: {type(exc.orig).__name__}")

    @app.exception_handler(SchemaError)
    async def _schema(_: Request, exc: SchemaError) -> JSONResponse:
        return _json(503, "unavailable", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # never a bare 500 page
        log.exception("unexpected error")
        return _json(500, "internal", f"{type(exc).__name__}: internal error")


def describe_validation(e: dict) -> str:
    """One validation error in words, naming the field: ``lr: nan is not a finite number ...``."""
    loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header")]
    where = ".".join(loc) or "body"
    if e.get("type") == "json_invalid":  # api/bodies.py says what is wrong with the body
        return f"body: {(e.get('ctx') or {}).get('error', 'not valid JSON')}"
    if e.get("type") == "finite_number":  # JSON has no NaN or infinities; Python's json reads them
        value = e.get("input")
        named = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(str(value), repr(value))
        return f"{where}: {named} is not a finite number; give a finite number"
    if e.get("type") == "string_pattern_mismatch":  # the pattern is for machines: say the form in words
        form = {"k": "a whole number, a comma list such as 5,10,20, ranges a-b, or all (each k at most 1000)",
                "model": "a model's name: letters, digits, _ . and -", "format": "json or csv"}
        return f"{where}: {e.get('input')!r} is not {form.get(str(loc[-1]) if loc else '', 'of the expected form')}"
    return f"{where}: {error_text(e)}"


def _routes(app) -> list:
    """Every route of the app, those of included routers too (FastAPI 0.16x keeps them nested)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # an older FastAPI copies included routes into the app's own list
        return list(app.router.routes)
    return list(iter_route_contexts(app.router.routes))


def allowed_methods(request: Request) -> str:
    """The Allow header of a 405: the methods of every route whose path matches, HEAD wherever GET is."""
    methods: set[str] = set()
    for route in _routes(request.app):
        regex = getattr(route, "path_regex", None)
        if regex is not None and getattr(route, "methods", None) and regex.match(request.url.path):
            methods |= set(route.methods)
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


class HeadAsGet:
    """ASGI middleware: HEAD is answered wherever GET is, as GET's status and headers without its body
    (FastAPI routes declare GET alone)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return None
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


UPLOAD_PATH = re.compile(r"/experiments/[^/]+/embeddings|/datasets")
ENCODE_PATH = re.compile(r"/experiments/[^/]+/encode")
ENCODE_BODY = 64 * 1024 * 1024  # new images (api/routes/encode.py): 256 of a quarter MB, base64 in JSON


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413, declared or streamed (chunked). A
    streamed body is read here first, up to the limit, so that the answer is 413 whatever the route's
    body parsing would have made of a body cut short."""

    def __init__(self, app, limit: int, uploads: int | None = None) -> None:
        self.app, self.limit, self.uploads = app, limit, uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if self.uploads is not None and UPLOAD_PATH.fullmatch(scope.get("path", "")):
            # an embedding's .npy (AEKNN_MAX_UPLOAD): the route streams it to disk and stops at the cap
            if length is not None and length.isdigit() and int(length) > self.uploads:
                return await self._reject(send, self.uploads, "AEKNN_MAX_UPLOAD")
            return await self.app(scope, receive, send)
        if ENCODE_PATH.fullmatch(scope.get("path", "")):  # the route reads it up to its own cap
            if length is not None and length.isdigit() and int(length) > ENCODE_BODY:
                return await self._reject(send, ENCODE_BODY)
            return await self.app(scope, receive, send)
        if length is not None and length.isdigit():
            if int(length) > self.limit:
                return await self._reject(send)
            return await self.app(scope, receive, send)  # declared and within the limit: as it comes
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, _replay([message]), send)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await self._reject(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}],
                                             receive), send)

    async def _reject(self, send, limit: int | None = None, name: str = "") -> None:
        limit = self.limit if limit is None else limit
        resp = _json(413, "too_large", f"request body over {limit:,} bytes" + (f" ({name})" if name else ""))
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


def _replay(messages: list[dict], then=None):
    """An ASGI receive that gives ``messages`` first, then whatever ``then`` gives (a disconnect)."""
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
