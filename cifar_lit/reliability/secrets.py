"""Secrets never leave the process: a password in a URL (a tracking server's, a database's) or a token in its query
is masked wherever text is written or printed (`postgresql://user:***@host/db`)."""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@host: the password; ?token=..., &api_key=..., &password=...: the value.
PASSWORD_IN_URL = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^/\s:@]+:)(?P<secret>[^@/\s]+)(?P<tail>@)")
SECRET_PARAMETER = re.compile(r"(?P<head>[?&](?:token|access_token|api_key|apikey|key|password|secret)=)"
                              r"(?P<secret>[^&#\s]+)", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """`text` with every password in a URL and every secret query parameter replaced by ***."""
    text = PASSWORD_IN_URL.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)
    return SECRET_PARAMETER.sub(lambda m: f"{m['head']}{MASK}", text)


def is_masked(text: str | None) -> bool:
    return text is not None and MASK in text
