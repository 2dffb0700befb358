"""New images: where does this digit land, and who are its neighbours? (``POST /experiments/{id}/encode``)

The body is read and brought to the data's format here (numpy and Pillow: common/compute/placing.py); the
encoder process (``aeknn encoder``, worker/encoder.py) encodes it and finds its neighbours, reached over
Redis. This process never imports torch; with no encoder running the answer is 503, naming it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.deps import SessionDep, SettingsDep, require_read
from api.errors import ENCODE_BODY, ERROR_RESPONSES, AppError
from common.compute import pictures, placing
from common.errors import DataError
from common.secrets import redact
from common.settings import Settings
from common.study import encoding, jobs

router = APIRouter(prefix="/experiments", tags=["encode"], responses=ERROR_RESPONSES,
                   dependencies=[Depends(require_read)])

BODY = {"requestBody": {"required": True, "description": (
    "one PNG or JPEG image (Content-Type image/png or image/jpeg); or JSON {\"images\": [base64 PNG/JPEG, ...]} "
    "and/or {\"arrays\": [sample, ...]} with each sample of the data's shape; or an .npy of (M, *shape) or one "
    "sample (application/octet-stream). At most 256 samples."),
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

_clients: dict[str, object] = {}
_lock = threading.Lock()


def _redis(settings: Settings):
    import redis

    with _lock:
        if settings.broker_url not in _clients:
            _clients[settings.broker_url] = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2,
                                                                 socket_timeout=settings.encode_timeout + 5)
        return _clients[settings.broker_url]


async def _body(request: Request) -> bytes:
    size, parts = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > ENCODE_BODY:
            raise AppError("too_large", f"the body is over {ENCODE_BODY:,} bytes; send large images in several "
                                        "requests")
        parts.append(chunk)
    return b"".join(parts)


def _image(data: bytes, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        return placing.prepare(placing.decode(data, what), shape, what)
    except placing.TooLarge as exc:
        raise AppError("too_large", str(exc)) from None


def read_rows(body: bytes, content_type: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The request's samples as (M, D) rows of the data's type; DataError (422) naming what is wrong."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("image/png", "image/jpeg"):
        return _image(body, shape, "the image")[None]
    if kind == "application/json":
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"the body: not JSON ({exc})") from None
        if not isinstance(doc, dict) or not ({"images", "arrays"} & doc.keys()):
            raise DataError('the body: expected {"images": [base64 PNG or JPEG, ...]} or {"arrays": [...]}')
        images, arrays = doc.get("images") or [], doc.get("arrays") or []
        if not isinstance(images, list) or not isinstance(arrays, list):
            raise DataError("the body: images and arrays are lists")
        if len(images) + len(arrays) > placing.MAX_IMAGES:
            raise DataError(f"the body: {len(images) + len(arrays)} samples; at most {placing.MAX_IMAGES} a request")
        rows = []
        for i, b64 in enumerate(images):
            if not isinstance(b64, str):
                raise DataError(f"images[{i}]: not a base64 string")
            try:
                data = base64.b64decode(b64.split(",", 1)[-1] if b64.startswith("data:") else b64, validate=True)
            except (binascii.Error, ValueError):
                raise DataError(f"images[{i}]: not base64") from None
            rows.append(_image(data, shape, f"images[{i}]"))
        if arrays:
            try:
                values = np.asarray(arrays, dtype=np.float64)
            except (ValueError, TypeError):
                raise DataError(f"arrays: not numbers in the shape {tuple(shape)} of a sample") from None
            rows.extend(placing.as_rows(values, shape, dtype, "arrays"))  # a list of samples
        if not rows:
            raise DataError("the body: no samples")
        return np.stack([np.asarray(r, dtype) for r in rows])
    if kind in ("application/octet-stream", "application/x-npy"):
        try:
            values = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"the body: not an .npy file ({exc})") from None
        return placing.as_rows(values, shape, dtype, "the .npy")
    raise DataError(f"Content-Type {kind or 'none'}: expected image/png, image/jpeg, application/json or "
                    "application/octet-stream (.npy)")


def _png(row: np.ndarray, shape: tuple[int, ...]) -> str:
    """A byte sample as a PNG data URL (vectors as a square of their values)."""
    from PIL import Image

    [pic] = pictures.pictures(row[None], shape)
    buf = io.BytesIO()
    Image.fromarray(pic.astype(np.uint8), mode=pictures.mode(shape)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(settings: Settings, request: dict) -> dict:
    """The encoder's answer, or 503 naming why there is none."""
    import redis

    r = _redis(settings)
    try:
        if not r.exists(jobs.ENCODER_ALIVE):
            raise AppError("unavailable", "no encoder is running: start `aeknn encoder` (the compose service "
                                          "`encoder`) where it reaches the broker and the database")
        reply = f"{jobs.ENCODE_QUEUE}:reply:{uuid.uuid4().hex}"
        r.rpush(jobs.ENCODE_QUEUE, json.dumps({**request, "reply": reply,
                                               "deadline": time.time() + settings.encode_timeout}))
        got = r.blpop([reply], timeout=settings.encode_timeout)
    except redis.RedisError as exc:
        raise AppError("unavailable", f"the broker at {redact(settings.broker_url)} is unreachable: "
                                      f"{type(exc).__name__}") from None
    if got is None:
        raise AppError("unavailable", f"the encoder did not answer within AEKNN_ENCODE_TIMEOUT "
                                      f"({settings.encode_timeout:g} s)")
    return json.loads(got[1])


STATUS_CODES = {404: "not_found", 409: "conflict", 422: "invalid"}


@router.post("/{experiment_id}/encode", openapi_extra=BODY)
async def encode(experiment_id: int, request: Request, session: SessionDep, settings: SettingsDep,
                 k: Annotated[int, Query(ge=1, le=1000, description="neighbours per list")] = 20,
                 models: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,64}(,[A-Za-z0-9_.-]{1,64})*$",
                                                     description="comma list (default: every model)")] = None):
    """New images on a finished experiment's maps. Each sample is brought to the data's format (MNIST: the
    digit's box scaled into 20 x 20 and centred by mass in 28 x 28; the answer shows it), then for each
    model: its 2-D code, its exact top-k among the experiment's samples in pixel space and in that model's
    code space (each distance of the study), and the share of the k the two lists have in common. A model
    that cannot place it says why."""
    shape, dtype = encoding.sample_format(session, experiment_id)
    body = await _body(request)
    try:
        rows = await run_in_threadpool(read_rows, body, request.headers.get("content-type", ""), shape, dtype)
    except DataError as exc:
        raise AppError("invalid", str(exc)) from None
    answer = await run_in_threadpool(ask, settings, {
        "experiment": experiment_id, "k": k, "models": models.split(",") if models else None,
        "dtype": dtype.str, "m": len(rows), "rows": base64.b64encode(np.ascontiguousarray(rows).tobytes()).decode()})
    if answer["status"] != 200:
        raise AppError(STATUS_CODES.get(answer["status"], "failed"), answer["message"])
    out = []
    for i, (r, item) in enumerate(zip(rows, answer["images"], strict=True)):
        out.append({"index": i, "prepared": r.tolist(),
                    "picture": _png(r, shape) if dtype == np.uint8 else None, **item})
    return {"experiment": experiment_id, "k": k, "shape": list(shape), "images": out}
