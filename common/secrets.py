"""Credentials never leave the process: every URL shown without its password, every message and log line
scrubbed of the secrets the settings hold. Imports only the standard library.

- :func:`redact` shows a URL as ``scheme://user:***@host/...``: use it wherever a URL is put in words.
- :func:`scrub` replaces every registered secret in a text (an exception's message may quote a URL).
- :func:`install` registers the settings' secrets (the passwords in the database and broker URLs, the
  API keys) and makes every log record of the process scrubbed when it is created, its traceback too,
  whatever handler writes it.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from urllib.parse import unquote, urlsplit

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?=@)")
_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: m["head"] + "***", str(url))


def password_of(url: str) -> str | None:
    try:
        pw = urlsplit(str(url)).password
    except ValueError:
        return None
    return unquote(pw) if pw else None


def register(*values: str | None) -> None:
    """Secrets to scrub from every message: passwords, keys (short values are ignored: a 3-character
    'secret' would blank out ordinary words)."""
    with _lock:
        for v in values:
            if v and len(v) >= 4:
                _secrets.add(v)
                _secrets.add(unquote(v))


def register_urls(*urls: str | None) -> None:
    register(*(password_of(u) for u in urls if u))


def scrub(text: str) -> str:
    """``text`` with every URL's password and every registered secret replaced by ``***``."""
    out = redact(text)
    for s in sorted(_secrets, key=len, reverse=True):
        if s in out:
            out = out.replace(s, "***")
    return out


def _scrubbing_factory(base):
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logging module's to report
            return record
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = scrub(text)
        return record

    return factory


def install(settings) -> None:
    """Register the settings' secrets and scrub every log record of this process from now on."""
    global _installed
    register_urls(settings.database_url, settings.broker_url)
    register(getattr(settings, "api_key", None), getattr(settings, "read_key", None))
    with _lock:
        if not _installed:
            logging.setLogRecordFactory(_scrubbing_factory(logging.getLogRecordFactory()))
            _installed = True
