"""annopull's own S3 client: signing, credentials, pagination and error answers.

Signatures are checked two independent ways: by moto with its signature verification on
(an IAM user's keys, anything else refused) and against botocore's own SigV4 signer. Error
answers come from a small loopback server that answers what S3 answers when it refuses.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from annopull import ConfigError, StorageError
from annopull._storage.aws import Credentials, encode_query, region_of, sign, static_credentials
from annopull._storage.s3 import S3Client, S3Url, close_clients, open_client
from annopull.testing import KognicProject
from s3_server import (
    DUMMY_ENV,
    S3Server,
    boto3,
    s3_server_fixture,  # noqa: F401 - registers the fixture
)
from test_resume import serve
from test_s3 import run

botocore_auth = pytest.importorskip("botocore.auth")
botocore_awsrequest = pytest.importorskip("botocore.awsrequest")
botocore_credentials = pytest.importorskip("botocore.credentials")
moto_settings = pytest.importorskip("moto.settings")
moto_responses = pytest.importorskip("moto.core.responses")

NOW = datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fresh_clients() -> Iterator[None]:
    """Each test's clients are its own, closed at its end."""
    close_clients()
    yield
    close_clients()


@pytest.fixture(scope="module", name="iam_keys")
def iam_keys_fixture(s3_server: S3Server) -> tuple[str, str]:
    """An IAM user of the moto server allowed everything: its (access key, secret)."""
    iam = boto3.client("iam", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    iam.create_user(UserName="puller")
    allow = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [allow]}
    iam.put_user_policy(UserName="puller", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="puller")["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@pytest.fixture(name="verified")
def verified_fixture(s3_server: S3Server, iam_keys: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """moto checks every request's signature (against ``iam_keys``) while the test runs."""
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    moto_responses.ActionAuthenticatorMixin.request_count = 0
    try:
        yield iam_keys
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")


def roundtrip(client: S3Client, bucket: str) -> None:
    """A put, get, ranged get, head, listing and a two-part upload, each checked."""
    url = S3Url(bucket, "dir/a b.txt")
    etag = client.put(url, b"hello world", metadata={"run": "1"})
    assert client.get(url) == b"hello world"
    assert client.get_range(url, 6, 5) == b"world"
    info = client.head(url)
    assert info is not None
    assert (info.size, info.etag) == (11, etag)
    assert [o.url for o in client.list_objects(S3Url(bucket, "di"))] == [url]
    big = S3Url(bucket, "dir/big.bin")
    upload = client.create_upload(big)
    first = bytearray(b"x" * (5 << 20))
    parts = [client.upload_part(big, upload, 1, first), client.upload_part(big, upload, 2, b"end")]
    assert client.list_parts(big, upload) == parts
    client.complete_upload(big, upload, parts)
    assert client.get_range(big, (5 << 20) - 1, 10) == b"xend"
    client.delete([url, big])
    assert list(client.list_objects(S3Url(bucket, ""))) == []


def test_signed_requests_pass_moto_verification(
    s3_server: S3Server, verified: tuple[str, str]
) -> None:
    """Signed calls pass moto's signature check; a wrong secret is a ConfigError without it."""
    key, secret = verified
    env = s3_server.env() | {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    client = open_client(env=env)
    bucket = _bucket_made(s3_server, "signed-env", verified)
    client.check_bucket(S3Url(bucket))
    roundtrip(client, bucket)
    wrong = open_client(env=env | {"AWS_SECRET_ACCESS_KEY": "not-the-secret-1234"})
    with pytest.raises(ConfigError) as refused:
        wrong.put(S3Url(bucket, "k"), b"x")
    assert str(refused.value) == f"SignatureDoesNotMatch: s3://{bucket}/k"


def _bucket_made(s3_server: S3Server, name: str, keys: tuple[str, str]) -> str:
    """A new bucket, made with the verified keys (moto refuses the dummy ones now)."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1],
    )
    client.create_bucket(Bucket=name)
    return name


def test_credentials_from_a_profile_file(
    s3_server: S3Server, verified: tuple[str, str], tmp_path: Path
) -> None:
    """With no keys in the environment, AWS_PROFILE's section of the credentials file signs."""
    key, secret = verified
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = other\naws_secret_access_key = other\n\n"
        f"[work]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
    )
    config = tmp_path / "config"
    config.write_text("[profile work]\nregion = eu-north-1\n")
    env = {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(config),
        "AWS_PROFILE": "work",
    }
    assert static_credentials(env) == Credentials(key, secret)
    assert region_of(env) == "eu-north-1"
    roundtrip(open_client(env=env), _bucket_made(s3_server, "signed-profile", verified))


def test_profile_that_needs_botocore_is_left_to_it(tmp_path: Path) -> None:
    """A profile with a role (or SSO, a process) is not read as keys: botocore's chain is."""
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    config = tmp_path / "config"
    config.write_text("[profile ops]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_CONFIG_FILE": str(config)}
    assert static_credentials(env) == Credentials("a", "b")
    assert static_credentials(env | {"AWS_PROFILE": "ops"}) is None
    assert static_credentials(env | {"AWS_WEB_IDENTITY_TOKEN_FILE": "/t"}) is None
    assert region_of(env) == "us-east-1"


def test_wrong_secret_is_one_line_exit_2(
    s3_server: S3Server, verified: tuple[str, str], tmp_path: Path
) -> None:
    """A wrong secret: exit 2, one line naming the bucket, the secret nowhere, nothing fetched."""
    bucket = _bucket_made(s3_server, "wrong-secret", verified)
    secret = "wrong-secret-d41d8cd98f00b204"
    project = KognicProject(project="p", annotation_types=("t",), count=20, content_size=100)
    with serve(tmp_path, project) as pull:
        done = run(
            pull,
            f"s3://{bucket}/out.zip",
            AWS_ACCESS_KEY_ID=verified[0],
            AWS_SECRET_ACCESS_KEY=secret,
        )
        assert done.returncode == 2, done.stderr
        # The first call is a HEAD of the bucket: S3 answers it 403 with no body to name why.
        assert done.stderr.strip().splitlines() == [
            f"annopull: error: access denied: s3://{bucket}/"
        ]
        assert secret not in done.stderr + done.stdout
        assert sum(pull.requests().values()) == 0


@pytest.mark.parametrize(
    ("method", "path", "query", "headers"),
    [
        pytest.param("GET", "/b", [("list-type", "2"), ("prefix", "a b/ü+~*")], {}, id="list"),
        pytest.param(
            "GET",
            "/b",
            [("list-type", "2"), ("continuation-token", "1/x+y==")],
            {},
            id="token",
        ),
        pytest.param("POST", "/b/k%2Bv", [("uploads", "")], {}, id="subresource"),
        pytest.param(
            "PUT",
            "/b/dir/a%20b",
            [("partNumber", "3"), ("uploadId", "u~1")],
            {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "x-amz-meta-run": "  two   words "},
            id="part",
        ),
    ],
)
def test_signature_matches_botocore(
    method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str]
) -> None:
    """Our SigV4 signature equals botocore's for the same request (its query encoding too)."""
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "tok/en=")
    signed = sign(
        method=method,
        host="127.0.0.1:9000",
        path=path,
        query=query,
        headers=headers,
        payload_hash="UNSIGNED-PAYLOAD",
        credentials=credentials,
        region="eu-north-1",
        now=NOW,
    )
    ours = signed.pop("Authorization").rpartition("Signature=")[2]
    # botocore encodes the query itself, from the names and values.
    request = botocore_awsrequest.AWSRequest(
        method=method, url=f"http://127.0.0.1:9000{path}", params=query, headers=signed
    )
    request.context["timestamp"] = signed["x-amz-date"]
    auth = botocore_auth.S3SigV4Auth(
        botocore_credentials.Credentials("AKIDEXAMPLE", credentials.secret_key, "tok/en="),
        "s3",
        "eu-north-1",
    )
    canonical = auth.canonical_request(request)
    assert canonical.splitlines()[2] == encode_query(query)
    assert ours == auth.signature(auth.string_to_sign(request, canonical), request)


def test_listings_are_read_page_by_page(s3_server: S3Server) -> None:
    """ListObjectsV2 and ListParts with small pages: every key and part, in order, once."""
    bucket = s3_server.bucket("pages")
    keys = [f"many/{n:03d}" for n in range(23)]
    for key in keys:
        s3_server.client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3_server.client.put_object(Bucket=bucket, Key="other", Body=b"")
    # The server does page at 7 (so more than one page is read below).
    first = s3_server.client.list_objects_v2(Bucket=bucket, Prefix="many/", MaxKeys=7)
    assert first["IsTruncated"]
    client = open_client()
    listed = list(client.list_objects(S3Url(bucket, "many/"), page_size=7))
    assert [o.url.key for o in listed] == keys
    assert all(o.size == len(o.url.key) for o in listed)

    url = S3Url(bucket, "parts.bin")
    upload = client.create_upload(url)
    parts = [client.upload_part(url, upload, n, bytes([n]) * n) for n in range(1, 6)]
    assert s3_server.client.list_parts(Bucket=bucket, Key=url.key, UploadId=upload, MaxParts=2)[
        "IsTruncated"
    ]
    assert client.list_parts(url, upload, page_size=2) == parts
    assert client.uploads(S3Url(bucket, "")) == [(url, upload)]
    client.abort_upload(url, upload)
    assert client.list_parts(url, upload) is None
    assert s3_server.uploads(bucket) == []


class _Refusing(BaseHTTPRequestHandler):
    """Answers as S3 does when it refuses: a status and an XML ``<Error>`` document."""

    #: path -> the answers still to give, in order (the last one repeats).
    script: ClassVar[dict[str, list[tuple[int, str]]]] = {}
    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.partition("?")[0]
        self.seen.append(f"{self.command} {path}")
        answers = self.script[path]
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"e"')
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = _answer

    def log_message(self, *_: Any) -> None:
        """Quiet: the test asserts on what it saw."""


def _error(code: str, message: str) -> str:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"


@pytest.fixture(name="refusing")
def refusing_fixture() -> Iterator[S3Client]:
    """A client of the refusing server (loopback, dummy keys)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Refusing.seen.clear()
    env = DUMMY_ENV | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}"}
    try:
        yield open_client(env=env)
    finally:
        close_clients()
        server.shutdown()
        server.server_close()
        thread.join()


def test_error_answers_become_one_line_errors(refusing: S3Client) -> None:
    """S3's error documents: code and message kept, retried only when a retry may help."""
    _Refusing.script = {
        "/b/bad": [(400, _error("InvalidArgument", "Part number must be an integer"))],
        "/b/denied": [(403, _error("AccessDenied", "Access Denied"))],
        "/b/busy": [(503, _error("SlowDown", "Reduce your request rate")), (200, "")],
        "/b/joined": [(200, _error("InternalError", "try again")), (200, "<Done/>")],
    }
    with pytest.raises(StorageError) as refused:
        refusing.put(S3Url("b", "bad"), b"x")
    assert str(refused.value).splitlines() == [
        "object store refused: InvalidArgument: Part number must be an integer "
        "(HTTP 400, s3://b/bad)"
    ]
    with pytest.raises(ConfigError, match=r"^access denied: s3://b/denied$"):
        refusing.put(S3Url("b", "denied"), b"x")
    assert refusing.put(S3Url("b", "busy"), b"x") == '"e"'
    # A join that fails after its 200 went out is an error too, and retried.
    refusing.complete_upload(S3Url("b", "joined"), "u", [])
    assert _Refusing.seen == [
        "PUT /b/bad",
        "PUT /b/denied",
        "PUT /b/busy",
        "PUT /b/busy",
        "POST /b/joined",
        "POST /b/joined",
    ]


def test_no_credentials_is_one_line_exit_2(s3_server: S3Server, tmp_path: Path) -> None:
    """No keys anywhere and no botocore to look further: exit 2, one line saying what to set."""
    bucket = s3_server.bucket("no-keys")
    empty = tmp_path / "empty"
    empty.write_text("")
    project = KognicProject(project="p", annotation_types=("t",), count=5, content_size=100)
    with serve(tmp_path, project) as pull:
        env = {k: v for k, v in pull.env().items() if k not in DUMMY_ENV}
        env |= {"AWS_SHARED_CREDENTIALS_FILE": str(empty), "AWS_CONFIG_FILE": str(empty)}
        code = (
            "import sys; sys.modules['botocore'] = None\n"
            f"sys.argv = {pull.argv(f's3://{bucket}/x.zip')[2:]!r}\n"
            "from annopull._cli import entry; entry()"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"annopull: error: no usable AWS credentials for s3://{bucket}/: ")
        assert "AWS_ACCESS_KEY_ID" in line
        assert sum(pull.requests().values()) == 0
