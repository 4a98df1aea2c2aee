"""No secret reaches a message, a log line, an exception text or a summary.

Unit tests of :mod:`annopull._redact` first, then runs of the CLI as a subprocess that fail
in many ways against the fakes (echoed error bodies, signed-URL redirects, ``-v`` logging)
and must print and write none of the secrets, signatures and tokens they handled.
"""

from __future__ import annotations

import io
import logging
import secrets
from pathlib import Path

import pytest

from annopull._cli.common import fail, write_summary
from annopull._errors import AnnopullError, StorageError
from annopull._redact import MASK, RedactingFormatter, redact, register_secret

SIGNED = (
    "https://storage.googleapis.com/bucket/o/scene.json?X-Goog-Algorithm=GOOG4-RSA-SHA256"
    "&X-Goog-Credential=svc%40proj.iam%2F20260101&X-Goog-Expires=3600"
    "&X-Goog-Signature=5f2b9c0d1e8a7b6c5d4e3f2a1b0c9d8e"
)
SIGNATURE = "5f2b9c0d1e8a7b6c5d4e3f2a1b0c9d8e"


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        pytest.param(
            f"TooManyRedirects: 0, message='', url='{SIGNED}'",
            ["url='https://storage.googleapis.com/bucket/o/scene.json'"],
            [SIGNATURE, "X-Goog-Credential", "svc%40proj"],
            id="aiohttp-exception-url",
        ),
        pytest.param(
            "see http://user:pa55word@127.0.0.1:8443/o/a/b?signature=abc123def&expires=9#frag.",
            ["http://127.0.0.1:8443/o/a/b."],
            ["pa55word", "abc123def", "frag"],
            id="url-credentials-query-fragment",
        ),
        pytest.param(
            r"uri: https:\/\/h\/o\/x?sig=0123456789abcdef",
            [r"https:\/\/h\/o\/x"],
            ["0123456789abcdef"],
            id="json-escaped-url",
        ),
        pytest.param(
            "rejected grant_type=client_credentials&client_id=cid&client_secret=Zx9-secret-v",
            ["grant_type=client_credentials", "client_id=cid", f"client_secret={MASK}"],
            ["Zx9-secret-v"],
            id="form-body",
        ),
        pytest.param(
            "/o/x?expires=1700000000&signature=deadbeefcafe&X-Amz-Signature=feedface0099"
            "&X-Amz-Security-Token=tok3n-value&access_token=at-value&api_key=ak-value&token=t-v",
            ["expires=1700000000", f"signature={MASK}", f"X-Amz-Signature={MASK}"],
            ["deadbeefcafe", "feedface0099", "tok3n-value", "at-value", "ak-value", "t-v"],
            id="query-without-scheme",
        ),
        pytest.param(
            '{"error": "invalid_client", "client_secret": "a \\" b", "accessToken": 12345,'
            ' "refresh_token": "rt-value", "status": "denied"}',
            ['"error": "invalid_client"', f'"client_secret": "{MASK}"', '"status": "denied"'],
            ['a \\" b', "12345", "rt-value"],
            id="json-body",
        ),
        pytest.param(
            r"message: {\"clientSecret\": \"nested-secret\"}",
            [rf"\"clientSecret\": \"{MASK}\""],
            ["nested-secret"],
            id="json-inside-a-json-string",
        ),
        pytest.param(
            "{'Authorization': 'Api-Key al-key-12345', 'Accept': 'application/json'}",
            [f"'Authorization': '{MASK}'", "'Accept': 'application/json'"],
            ["al-key-12345"],
            id="headers-dict-repr",
        ),
        pytest.param(
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>SignatureDoesNotMatch</Code>"
            "<Message>Access denied.</Message><StringToSign>GOOG4-RSA-SHA256\n20260101\nabc"
            "</StringToSign><SignatureProvided>c0ffee00c0ffee00</SignatureProvided>"
            "<CanonicalRequest>GET\n/o/x\nX-Goog-Credential=svc</CanonicalRequest></Error>",
            ["<Code>SignatureDoesNotMatch</Code>", "<Message>Access denied.</Message>"],
            ["c0ffee00c0ffee00", "GOOG4-RSA-SHA256", "X-Goog-Credential=svc"],
            id="storage-xml",
        ),
        pytest.param(
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig, retrying",
            [f"Authorization: {MASK}, retrying"],
            ["eyJhbGciOiJIUzI1NiJ9"],
            id="authorization-header",
        ),
        pytest.param(
            "sent Bearer tok_abcdefghijkl and Basic dXNlcjpwYXNzd29yZA== and Api-Key k-123456789",
            [f"Bearer {MASK}", f"Basic {MASK}", f"Api-Key {MASK}"],
            ["tok_abcdefghijkl", "dXNlcjpwYXNzd29yZA==", "k-123456789"],
            id="credential-schemes",
        ),
    ],
)
def test_redact_removes_secrets(text: str, kept: list[str], gone: list[str]) -> None:
    """Each shape of secret is masked; the words around it stay; redacting twice changes nothing."""
    masked = redact(text)
    for part in kept:
        assert part in masked, masked
    for part in gone:
        assert part not in masked, masked
    assert redact(masked) == masked


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("token is unknown or expired", id="the-word-token"),
        pytest.param("storage requests must not carry an Authorization header", id="header-word"),
        pytest.param(
            "giving up: server answered 503 (item 3f1c, HTTP 503, "
            "http://127.0.0.1:4100/o/P/T/3f1c/v0, after 4 attempts)",
            id="transfer-error",
        ),
        pytest.param("--skip-existing out.zip is also the output", id="flag"),
        pytest.param("Kognic refused the client credentials of client id 'c1'", id="client-id"),
        pytest.param('{"nextCursorId": "20", "expires_in": 3600}', id="harmless-json"),
    ],
)
def test_redact_keeps_ordinary_text(text: str) -> None:
    """Messages without secrets come back unchanged."""
    assert redact(text) == text


def test_registered_secret_is_masked_anywhere() -> None:
    """A registered value is masked in any words, URL-encoded too; short values are ignored."""
    value = f"s3cr+t/{secrets.token_hex(8)}"
    register_secret(value)
    register_secret("short")
    register_secret(None)
    text = f"key {value!r} unknown; form: x={value.replace('+', '%2B').replace('/', '%2F')}"
    masked = redact(text)
    assert value not in masked
    assert "%2F" not in masked
    assert f"key '{MASK}' unknown" in masked
    assert redact("a short word") == "a short word"


def test_error_messages_are_redacted() -> None:
    """AnnopullError masks its message, its reason and its URL, whatever the caller passed."""
    exc = AnnopullError(
        "storage said: <Error><SignatureProvided>abcd1234</SignatureProvided></Error>"
        f" for {SIGNED}",
        url=SIGNED,
        status=403,
    )
    for text in (str(exc), exc.reason, exc.url or ""):
        assert SIGNATURE not in text
        assert "abcd1234" not in text
    assert "https://storage.googleapis.com/bucket/o/scene.json" in str(exc)
    stored = StorageError("upload failed: token=abcdef123", path="out.zip", url=SIGNED)
    assert "abcdef123" not in str(stored)
    assert "path out.zip" in str(stored)


def test_fail_and_write_summary_redact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fail() masks its line; write_summary masks every string at any depth, keys too."""
    fail(f"cannot fetch {SIGNED}")
    assert SIGNATURE not in capsys.readouterr().err
    path = tmp_path / "s.json"
    write_summary(
        path,
        {"failures": [{"item": "x", "reason": f"403: {SIGNED}"}], f"k {SIGNED}": ("token=zz9",)},
    )
    text = path.read_text()
    assert SIGNATURE not in text
    assert "zz9" not in text
    assert '"item": "x"' in text


def test_redacting_formatter() -> None:
    """Log lines are masked as a whole: the message, its arguments and a traceback."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("annopull: %(message)s"))
    log = logging.getLogger("annopull.test_secrets")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("fetched %s with %s", SIGNED, "Authorization: Bearer abcdefghijklmnop")
        try:
            raise RuntimeError(f"boom at {SIGNED}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    output = stream.getvalue()
    assert output.startswith("annopull: fetched https://storage.googleapis.com/bucket/o/scene.json")
    assert "Traceback" in output
    assert SIGNATURE not in output
    assert "abcdefghijklmnop" not in output
