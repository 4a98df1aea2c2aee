"""One redactor for every message, log line, exception text and summary annopull emits.

Secrets reach text in many shapes: a signed URL inside an aiohttp exception, a storage
error body quoting the signed query, a token endpoint echoing ``client_secret=…``, an API
echoing the ``Authorization`` header. :func:`redact` removes all of them in one pass:

- the query string, fragment and ``user:password@`` of every URL (scheme, host, port and
  path stay, so a message still says which object failed);
- ``Authorization``/``Cookie`` header values and ``Bearer``/``Basic``/``Api-Key`` credentials;
- the value of every ``key=value``, JSON/dict ``"key": value`` and XML ``<Key>…</Key>``
  whose key names a secret (``client_secret``, ``access_token``, ``api_key``, ``token``,
  ``X-Amz-Signature``, ``X-Goog-Credential``, ``Signature``, ``sig``, ``password``, …);
- every value registered with :func:`register_secret` (the credentials a run loaded and
  the tokens it was given), in whatever words surround it.

This module is the bottom layer: it imports nothing of annopull, so every other layer
(errors, transport, CLI) can use it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "RedactingFormatter", "redact", "redact_data", "register_secret"]

#: What a removed secret is replaced by (the same mask ``Secret`` shows in its repr).
MASK: Final = "***"

#: Values shorter than this are not registered: masking every occurrence of a short
#: string would garble ordinary words, and a secret that short is no secret anyway.
MIN_SECRET_LENGTH: Final = 8

#: How many registered values are kept; the oldest go first (a long-running process
#: that refreshes a token hourly must not grow without bound, and old tokens are dead).
MAX_SECRETS: Final = 1024

# Words that make a key name a secret's: ``client_secret``, ``X-Amz-Security-Token``,
# ``X-Goog-Signature``, ``AWSAccessKeyId``, ``clientSecret``, ``SignatureProvided``…
_SECRET_WORDS: Final = re.compile(
    r"secret|token|signature|password|passwd|credential|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|authorization|cookie|session|stringtosign|canonicalrequest"
    r"|assertion",
    re.IGNORECASE,
)
# Whole key names that are secrets but too short to search for inside other names.
_SECRET_NAMES: Final = frozenset({"sig", "key", "auth", "pwd", "jwt"})

_URL: Final = re.compile(
    r"\b[a-z][a-z0-9+.-]*:(?://|\\/\\/)[^\s\"'<>`]+",
    re.IGNORECASE,
)
# Trailing characters that belong to the sentence, not to the URL.
_URL_TAIL: Final = ".,;:!)]}"

_KEY_VALUE: Final = re.compile(r"(?<![\w.%-])([A-Za-z_][\w.-]*)(\s*=\s*)([^&\s\"'<>,;)\]}\\]*)")
_QUOTED_KEY: Final = re.compile(
    r"([\"'])([A-Za-z_][\w.-]*)\1(\s*:\s*)"
    r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s,}\]]+)"
)
# The same inside a JSON string, where the quotes are escaped: ``{\\"token\\": \\"…\\"}``
# (shown here with the backslashes doubled).
_ESCAPED_QUOTED_KEY: Final = re.compile(
    r"(\\[\"'])([A-Za-z_][\w.-]*)\1(\s*:\s*)(\1(?:(?!\1).)*\1|[^\s,}\]\\]+)"
)
_XML_ELEMENT: Final = re.compile(
    r"<([A-Za-z_][\w.-]*)(\s[^<>]*)?>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE
)
_HEADER: Final = re.compile(
    r"\b((?:proxy-)?authorization|cookie|set-cookie|x-api-key|api-key|x-amz-security-token"
    r"|x-goog-api-key)(\s*:\s*)((?:(?:bearer|basic|digest|api-key|token)\s+)?[^\s\"',;]+)",
    re.IGNORECASE,
)
_SCHEME_CREDENTIAL: Final = re.compile(
    r"\b(bearer|basic|api-key|digest|negotiate)(\s+)([A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE
)

_lock = threading.Lock()
_secrets: dict[str, None] = {}
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in any text :func:`redact` sees from now on.

    Also masks its URL-encoded forms (how it travels in a form body or a query). ``None``,
    empty and very short values are ignored.

    Args:
        value: a credential loaded or a token obtained.
    """
    global _pattern
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        for form in {value, quote(value, safe=""), quote_plus(value)}:
            _secrets.pop(form, None)
            _secrets[form] = None
        while len(_secrets) > MAX_SECRETS:
            del _secrets[next(iter(_secrets))]
        _pattern = None


def _registered() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and _secrets:
            # Longest first, so a secret that contains another is masked whole.
            ordered = sorted(_secrets, key=len, reverse=True)
            _pattern = re.compile("|".join(map(re.escape, ordered)))
        return _pattern


def _is_secret_name(name: str) -> bool:
    return name.lower() in _SECRET_NAMES or _SECRET_WORDS.search(name) is not None


def _strip_url(match: re.Match[str]) -> str:
    url = match.group(0)
    tail = ""
    while url and url[-1] in _URL_TAIL:
        url, tail = url[:-1], url[-1] + tail
    scheme, sep, rest = url.partition("//")
    if not sep:  # the JSON-escaped form ``https:\/\/host\/path``
        scheme, sep, rest = url.partition("\\/\\/")
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}{tail}"


def _mask_key_value(match: re.Match[str]) -> str:
    name, sep, value = match.groups()
    if not value or value == MASK or not _is_secret_name(name):
        return match.group(0)
    return f"{name}{sep}{MASK}"


def _mask_quoted_key(match: re.Match[str]) -> str:
    quote_char, name, sep, _value = match.groups()
    if not _is_secret_name(name):
        return match.group(0)
    return f"{quote_char}{name}{quote_char}{sep}{quote_char}{MASK}{quote_char}"


def _mask_xml(match: re.Match[str]) -> str:
    name, attributes, content = match.groups()
    # An element that is not a secret's may hold one (``<Error><Signature>…``).
    content = MASK if _is_secret_name(name) else _XML_ELEMENT.sub(_mask_xml, content)
    return f"<{name}{attributes or ''}>{content}</{name}>"


def redact(text: str) -> str:
    """Return ``text`` with every secret it holds replaced by ``***``.

    Safe on any text and idempotent; ordinary messages come back unchanged.

    Args:
        text: a message, log line, exception text or error body.
    """
    text = str(text)
    pattern = _registered()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _URL.sub(_strip_url, text)
    text = _XML_ELEMENT.sub(_mask_xml, text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _SCHEME_CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _QUOTED_KEY.sub(_mask_quoted_key, text)
    text = _ESCAPED_QUOTED_KEY.sub(_mask_quoted_key, text)
    return _KEY_VALUE.sub(_mask_key_value, text)


class RedactingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose whole output (message, arguments, traceback)
    passes through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def redact_data(value: Any) -> Any:
    """``value`` (JSON-ready data) with every string in it, keys too, at any depth, masked.

    Strings are masked before any encoding, so a secret is found however JSON would escape it.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact_data(key): redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value
