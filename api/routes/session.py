"""The web page's read cookie. A browser cannot put a header on an <img>, so a page behind
AEKNN_READ_KEY sends the key once, here, and gets a cookie back that opens reads and nothing else."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import READ_COOKIE, SettingsDep, bearer_opens_reads, read_token
from api.errors import ERROR_RESPONSES, unauthorized

router = APIRouter(prefix="/session", tags=["session"], responses={401: ERROR_RESPONSES[401]})


@router.post("", status_code=204, response_class=Response)
def open_session(request: Request, settings: SettingsDep) -> Response:
    """Send the read key (or the API key) as `Authorization: Bearer <key>`: 204, and an HttpOnly,
    SameSite=Strict cookie that opens reads for this browser, never writes (it holds a token derived
    from the read key, not a key). Where reads are open (no AEKNN_READ_KEY) no cookie is needed or set."""
    if not settings.read_key:
        return Response(status_code=204)
    if not bearer_opens_reads(request, settings):
        raise unauthorized("send the read key (or the API key) as Authorization: Bearer <key>")
    response = Response(status_code=204)
    response.set_cookie(READ_COOKIE, read_token(settings.read_key), path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.delete("", status_code=204, response_class=Response)
def close_session() -> Response:
    """Forget the read cookie."""
    response = Response(status_code=204)
    response.delete_cookie(READ_COOKIE, path="/", httponly=True, samesite="strict")
    return response
