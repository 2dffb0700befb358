"""``GET /samples/{id}/neighbors`` answered below the framework: the API's hottest read.

FastAPI's per-request work (resolving dependencies, validating each query parameter into an enum, its
exit stacks) cost more than the read itself. This ASGI middleware answers a plain request for a sample's
neighbours with the same function as the route (``neighbors_response`` in api/routes/samples.py) and
passes anything else on unchanged: a parameter it does not recognise plainly (percent-encoded, repeated,
unknown, out of range), a server with a read key, and any error, which the route then answers as
before. The route stays the reference: its validation, its error shapes, its documentation.
"""

from __future__ import annotations

import inspect
import re

from starlette.requests import Request

from api import deps
from api.routes.samples import neighbors, neighbors_response
from common.study.config import Distance, Space

PREFIX, SUFFIX = "/samples/", "/neighbors"
CHOICES = {"space": frozenset(Space), "distance": frozenset(Distance)}
MODEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the route's pattern: which models exist, the read decides
# the route's own defaults, as a query would spell them
DEFAULTS = {name: None if p.default is None else str(p.default)
            for name, p in inspect.signature(neighbors).parameters.items()
            if name in ("space", "model", "distance", "k", "experiment")}
MAX_DIGITS = 9  # ids and k below 10^9: the route decides anything longer


def _count(text: str) -> int | None:
    """A whole number >= 1 written in plain ASCII digits, else None (the route decides)."""
    if 0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdigit() and int(text) >= 1:
        return int(text)
    return None


def parse(path: str, query: bytes) -> dict | None:
    """The route's arguments when the request is plain, else None."""
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    sample = path[len(PREFIX):-len(SUFFIX)]
    if not (0 < len(sample) <= MAX_DIGITS and sample.isascii() and sample.isdigit()):
        return None
    given = dict(DEFAULTS)
    if query:
        if b"%" in query or b"+" in query:
            return None
        seen = set()
        for part in query.decode("ascii", "replace").split("&"):
            name, eq, value = part.partition("=")
            if not eq or name not in given or name in seen:
                return None
            seen.add(name)
            given[name] = value
    for name, allowed in CHOICES.items():
        if given[name] not in allowed:
            return None
    if given["model"] is not None and not MODEL.fullmatch(given["model"]):
        return None
    k = _count(given["k"])
    experiment = None if given["experiment"] is None else _count(given["experiment"])
    if k is None or (given["experiment"] is not None and experiment is None):
        return None
    return {"sample_id": int(sample), "space": given["space"], "model": given["model"],
            "distance": given["distance"], "k": k, "experiment": experiment}


class NeighborsHotPath:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            args = parse(scope["path"], scope["query_string"])
            if args is not None:
                settings = scope["app"].state.settings
                if not settings.read_key:  # behind a key the route checks it
                    try:
                        response = neighbors_response(Request(scope), deps.read_factory_for(settings), **args)
                    except Exception:  # the route answers it again, with its error shape
                        response = None
                    if response is not None:
                        return await response(scope, receive, send)
        return await self.app(scope, receive, send)
