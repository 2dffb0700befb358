"""The encoder process (``aeknn encoder``): answers ``POST /experiments/{id}/encode`` over Redis.

A thin loop: it takes a request from jobs.ENCODE_QUEUE, answers it with common/study/encoding.py and pushes
the answer on the request's reply key. While it runs it keeps jobs.ENCODER_ALIVE set, so the API answers
503 at once when no encoder runs. Run one or more anywhere that reaches the broker and the database.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time

import numpy as np

from common.errors import DataError, Invalid, NotFound, NotReady
from common.settings import Settings
from common.study import encoding, jobs
from common.study.database import open_database

log = logging.getLogger("aeknn.encoder")
STATUS = ((NotFound, 404), (NotReady, 409), (DataError, 422), (Invalid, 422))


def handle(factory, req: dict) -> dict:
    """One request's answer, or its error with the status the API sends."""
    try:
        rows = np.frombuffer(base64.b64decode(req["rows"]), np.dtype(req["dtype"])).reshape(req["m"], -1)
        loaded = encoding.load(factory, req["experiment"])
        return {"status": 200, "images": encoding.answer(loaded, rows, req["k"], req.get("models"))}
    except Exception as exc:  # noqa: BLE001 - every failure is answered, the loop goes on
        status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
        if status == 500:
            log.exception("encode request for experiment %s failed", req.get("experiment"))
        return {"status": status, "message": str(exc) if status != 500 else f"the encoder failed: {exc!r}"}


def serve(settings: Settings, stop: threading.Event | None = None) -> None:
    import redis

    from common.compute.training import configure_numerics

    configure_numerics()
    r = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, socket_timeout=30)
    factory = open_database(settings.database_url)
    me = f"{socket.gethostname()}:{os.getpid()}"
    log.info("encoder %s: answering %s", me, jobs.ENCODE_QUEUE)
    stop = stop or threading.Event()
    try:
        while not stop.is_set():
            r.set(jobs.ENCODER_ALIVE, me, ex=jobs.ENCODER_ALIVE_TTL)
            item = r.blpop([jobs.ENCODE_QUEUE], timeout=1)
            if item is None:
                continue
            req = json.loads(item[1])
            if req.get("deadline", 0) < time.time():
                continue  # the API stopped waiting for it
            answer = handle(factory, req)
            r.rpush(req["reply"], json.dumps(answer, separators=(",", ":")))
            r.expire(req["reply"], 60)
    finally:  # stopped: the API answers 503 at once (another encoder, if any, sets the mark again)
        if r.get(jobs.ENCODER_ALIVE) == me.encode():
            r.delete(jobs.ENCODER_ALIVE)


def run(settings: Settings) -> None:
    """serve() until SIGTERM or SIGINT, which finish the request in hand."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(settings, stop)
