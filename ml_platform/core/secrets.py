"""Credentials stay out of everything we store or show: `user:pass@` becomes `user:***@`.

URLs with passwords (`MLFLOW_TRACKING_URI`, `ML_PLATFORM_ONLINE_STORE_URL`) reach resources as
env var names (`dg.EnvVar`), so run snapshots never hold them; an error whose text carries one
anyway (a driver quoting its connection string) is rewritten before Dagster stores it in the
event log, and alerts and CLI output pass through `redact`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@")
_QUERY_SECRET = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|token|secret|api_key|access_key)=)[^&\s'\"]+", re.I
)


def redact(text: str) -> str:
    """The text with URL passwords and `password=`-style query values replaced by `***`."""
    text = _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)
    return _QUERY_SECRET.sub(r"\g<key>***", text)


class RedactedError(RuntimeError):
    """An error whose message (or a cause's) held a credential, re-raised with it masked."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


@contextmanager
def errors_redacted() -> Iterator[None]:
    """Re-raise an error whose chain quotes a credential as `RedactedError`, chain cut: Dagster
    stores an error's message, cause and context in the event log, so all of it must be clean."""
    try:
        yield
    except Exception as exc:
        texts = [f"{type(e).__name__}: {e}" for e in _chain(exc)]
        if all(redact(t) == t for t in texts):
            raise
        raise RedactedError(redact("\n  caused by: ".join(texts))) from None
