"""A request body streamed to a temporary file up to AEKNN_MAX_UPLOAD (413 past it), with its SHA-256: what
the upload routes (your embedding, your data set) read their file from."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import BinaryIO

from fastapi import Request

from api.errors import AppError
from common.settings import Settings


@asynccontextmanager
async def spooled(request: Request, settings: Settings) -> AsyncIterator[tuple[BinaryIO, str]]:
    """The body as a binary file at its start, and the hex SHA-256 of its bytes; removed afterwards."""
    with tempfile.TemporaryFile() as f:
        size, digest = 0, hashlib.sha256()
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_upload:
                raise AppError("too_large", f"the body is over AEKNN_MAX_UPLOAD ({settings.max_upload:,} bytes)")
            f.write(chunk)
            digest.update(chunk)
        f.seek(0)
        yield f, digest.hexdigest()
