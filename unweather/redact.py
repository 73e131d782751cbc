"""Keep credentials out of logs, errors and stats: `rtsp://user:pass@host` becomes `rtsp://***@host`."""

from __future__ import annotations

import logging
import re

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def redact(text: str) -> str:
    """Replace the user-info part of every URL in `text` with `***`."""
    return _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", str(text))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URL credentials from every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        return True
