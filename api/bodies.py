"""JSON request bodies read strictly, so that every body the app cannot use is one 422 that says why.

Python's ``json.loads`` keeps the last of two equal keys without a word, and fails on some bodies with
errors that are not ``JSONDecodeError`` (invalid UTF-8, a 5,000-digit integer, nesting past the recursion
limit), which FastAPI answers with an undeclared 400. Every route with a JSON body reads it through
:func:`loads`. NaN and infinities (which RFC 8259 does not have) are read as floats, so that validation
refuses them by the field's name (``lr: NaN is not a finite number``)."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.routing import APIRoute

MAX_DIGITS = 30  # every number the API takes fits in far fewer digits


class _Refused(Exception):
    pass


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"the key {key!r} appears twice in one object; give each key once")
        out[key] = value
    return out


def _constant(name: str) -> float:
    return float(name)  # NaN, Infinity: read, so that validation refuses them naming the field


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise _Refused(f"a number of {len(text.lstrip('-'))} digits; numbers here have at most {MAX_DIGITS}")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 2 * MAX_DIGITS:
        raise _Refused(f"a number written with {len(text)} characters; numbers here need far fewer")
    return float(text)  # 1e999 is infinity: validation refuses it naming the field


def loads(raw: bytes) -> object:
    """The JSON value of ``raw``, or ``json.JSONDecodeError`` whose message says what is wrong in words."""
    def refused(why: str, pos: int = 0) -> json.JSONDecodeError:
        return json.JSONDecodeError(why, "", pos)  # FastAPI shows its msg: the words alone

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refused(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", exc.start) from None
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_int=_int,
                          parse_float=_float)
    except _Refused as exc:
        raise refused(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise refused(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", exc.pos) from None
    except RecursionError:
        raise refused("not valid JSON here: nested too deeply") from None


class StrictJSONRequest(Request):
    async def json(self) -> object:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose body is parsed by :func:`loads` (FastAPI's documented custom-route hook)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
