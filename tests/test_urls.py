"""The URL-list source: parsing and checking lists, names and keys, and pulls into sinks.

This module also holds the loopback file server that ``test_cli_urls.py`` uses: a small
aiohttp app on 127.0.0.1 serving fixed bodies by path, with the fakes' scripted faults
(:class:`annopull.testing.Fault`, target ``"file"``) and a request counter.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from annopull._client import Client
from annopull._config import Config, EngineConfig, RetryPolicy
from annopull._errors import ConfigError
from annopull._pipeline.pull import Selection, pull
from annopull._sinks import JsonlSink, ZipSink
from annopull._sources.urls import UrlEntry, UrlList, UrlSource, read_url_list
from annopull.testing import FaultPlan
from annopull.testing.faults import FakeServer, fault_answer, json_error, send_body

SECRET = "S1GNATURE-do-not-leak"


class FileServer(FakeServer):
    """Serves ``bodies`` (decoded path -> bytes) on loopback; everything else is a 404.

    ``faults`` apply to target ``"file"`` with ``match`` a path; ``requests`` counts the
    requests per path as they arrive; ``auth_headers`` counts requests carrying one.
    """

    def __init__(self, bodies: dict[str, bytes]) -> None:
        super().__init__(host="127.0.0.1")
        self.bodies = dict(bodies)
        self.faults = FaultPlan()
        self.requests: Counter[str] = Counter()
        self.auth_headers = 0
        self._lock = threading.Lock()

    async def _serve(self) -> None:
        await self._listen("files", [web.get("/{path:.*}", self._file)])

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self._url("files")

    def url(self, path: str, *, query: str = "") -> str:
        """The URL of ``path`` (as written: percent-encode it yourself), with a query."""
        return self.base + path + (f"?{query}" if query else "")

    def counts(self) -> Counter[str]:
        """A snapshot of the requests per path."""
        with self._lock:
            return Counter(self.requests)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        with self._lock:
            self.requests[path] += 1
            self.auth_headers += "Authorization" in request.headers
        fault = self.faults.take("file", path)
        answer = await fault_answer(fault)
        if answer is not None:
            return answer
        body = self.bodies.get(path)
        if body is None:
            return json_error(404, f"no file {path}")
        response, _ = await send_body(
            request, body, content_type="application/octet-stream", fault=fault, ranges=True
        )
        return response


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name", "key"),
    [
        pytest.param("https://h/d/a.json", "a.json", "https://h/d/a.json", id="path"),
        pytest.param(
            "https://h/d/report%20final%C3%A9.pdf", "report finalé.pdf", None, id="percent"
        ),
        pytest.param("https://h/d/x.bin\tmy name.bin", "my name.bin", "my name.bin", id="NAME"),
        pytest.param("  https://h/d/x.bin \t sub/y.bin  ", "sub/y.bin", "sub/y.bin", id="spaces"),
        pytest.param("https://h/dir/", "index", "https://h/dir/", id="dir-index"),
        pytest.param("https://h", "index", "https://h", id="no-path"),
        pytest.param("https://h/%2E%2E", "index", None, id="dotdot"),
        pytest.param("https://h/a%2Fb%5Cc%00d", "a_b_c_d", None, id="slash-and-nul"),
        pytest.param("HTTPS://H:8443/a#frag", "a", "https://h:8443/a", id="host-case-fragment"),
        # The key's host loses its brackets: redact_url's bug, reported; the name is right.
        pytest.param("http://[::1]:9/v6.txt", "v6.txt", None, id="ipv6"),
    ],
)
def test_names_and_keys(line: str, name: str, key: str | None) -> None:
    """The name is NAME, else the path's decoded last segment (index if none); so is the key."""
    [entry] = UrlList.from_lines([line]).entries
    assert entry.name == name
    assert entry.key == (key if key is not None else entry.key)
    assert entry.url == line.strip().partition("\t")[0].strip()


def test_signed_url_query_only_as_a_digest() -> None:
    """An unnamed URL's key keeps its query as a digest: distinct, stable, never the secret."""
    one, two, again = UrlList.from_lines(
        [f"https://h/o/a.json?sig={SECRET}{n}" for n in (1, 2, 1)]
    ).entries
    assert one.key != two.key
    assert one.key == again.key
    assert one.key.startswith("https://h/o/a.json (query sha256 ")
    for entry in (one, two):
        assert SECRET not in entry.key + repr(entry) + entry.name
    assert SECRET not in repr(UrlList.from_lines([one.url]))


def test_blank_comment_crlf_and_bom_lines_are_ignored() -> None:
    """Blank lines, # comments (indented too), CRLF ends and a BOM do not make entries."""
    raw = b"\xef\xbb\xbf# a list\r\n\r\n   \t\nhttps://h/a\r\n  # indented\nhttps://h/b\tB\r\n"
    urls = UrlList.from_lines(io.BytesIO(raw), origin="L")
    assert [(e.url, e.given_name) for e in urls] == [("https://h/a", None), ("https://h/b", "B")]
    assert len(urls) == 2


@pytest.mark.parametrize(
    ("line", "words"),
    [
        pytest.param(f"ftp://h/a?sig={SECRET}", "not an http or https URL", id="ftp"),
        pytest.param("h/a.json", "not an http or https URL (no scheme)", id="no-scheme"),
        pytest.param(f"https:///a?sig={SECRET}", "no host", id="no-host"),
        pytest.param(f"https://h:99999/a?sig={SECRET}", "bad port '99999'", id="port-range"),
        pytest.param("https://h:0/a", "bad port '0'", id="port-zero"),
        pytest.param("https://h:80x/a", "bad port '80x'", id="port-text"),
        pytest.param(f"https://h/a?sig={SECRET}\t", "a TAB with an empty NAME", id="empty-name"),
        pytest.param("https://h/a\t  ", "a TAB with an empty NAME", id="blank-name"),
        pytest.param("https://h/a\tb\tc", "more than one TAB", id="two-tabs"),
        pytest.param("https://h/a\x07b", "control character U+0007 in the URL", id="bell"),
        pytest.param("https://h/a\tn\x00", "control character U+0000 in the NAME", id="nul"),
        pytest.param("https://h/a\rb", "control character U+000D in the URL", id="cr"),
        pytest.param("https://h/a b.json", "a space in the URL", id="space"),
        pytest.param(f"https://u:{SECRET}@h/a", "credentials in the URL", id="userinfo"),
        pytest.param("https://[::1/a", "not a URL", id="bad-ipv6"),
        pytest.param("https://h/a\t../..", "names no file", id="name-dotdot"),
    ],
)
def test_malformed_line_names_its_number(line: str, words: str) -> None:
    """A malformed line is a ConfigError 'LIST:LINE: ...' that never echoes a secret."""
    lines = ["# header", "https://h/fine.json", "", line, "https://h/after.json"]
    with pytest.raises(ConfigError) as caught:
        UrlList.from_lines(lines, origin="urls.txt")
    message = str(caught.value)
    assert message.startswith("urls.txt:4: ")
    assert words in message
    assert SECRET not in message


def test_a_name_given_to_two_urls_is_refused() -> None:
    """One NAME for two URLs would drop one silently (same key): refused; for one URL, fine."""
    with pytest.raises(ConfigError, match=r"^L:3: NAME 'n.json' is already given to another URL"):
        UrlList.from_lines(
            ["https://h/a\tn.json", "https://h/b", "https://h/c\tn.json"], origin="L"
        )
    assert len(UrlList.from_lines(["https://h/a\tn.json", "https://h/a\tn.json"])) == 2


def test_a_line_that_is_not_utf8_is_refused() -> None:
    """Bytes that are not UTF-8 name their line and byte."""
    with pytest.raises(ConfigError, match=r"^L:2: not UTF-8 \(byte 11\)$"):
        UrlList.from_lines([b"https://h/a\n", b"https://h/\xff\n"], origin="L")


def _digest(*lines: str) -> str:
    return UrlList.from_lines(lines).digest


def test_digest_follows_the_entries_not_the_layout() -> None:
    """Comments, blanks, spaces and fresh signatures on NAMEd URLs keep the digest; the rest not."""
    base = _digest("https://h/a?sig=1\tA", "https://h/b")
    assert _digest("# c", "", " https://h/a?sig=2 \tA ", "https://h/b") == base
    assert _digest("https://h/a?sig=1\tA", "https://h/b?sig=1") != base  # unnamed, re-signed
    assert _digest("https://h/b", "https://h/a?sig=1\tA") != base  # order
    assert _digest("https://h/a?sig=1\tA2", "https://h/b") != base  # another NAME
    assert _digest("https://h/z?sig=1\tA", "https://h/b") != base  # another object
    assert _digest("https://h/a?sig=1\tA") != base  # one fewer


def test_read_url_list_from_file_stdin_and_missing(tmp_path: Path) -> None:
    """read_url_list reads a file, '-' reads the given stdin; a missing file is a ConfigError."""
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"https://h/a\nhttps://h/b\tB\n")
    from_file = read_url_list(listing)
    from_stdin = read_url_list("-", stdin=io.BytesIO(listing.read_bytes()))
    assert (
        list(from_file)
        == list(from_stdin)
        == [UrlEntry("https://h/a"), UrlEntry("https://h/b", "B")]
    )
    assert from_file.origin == str(listing)
    assert from_stdin.origin == "<stdin>"
    with pytest.raises(ConfigError, match=r"cannot read the URL list .*nope\.txt"):
        read_url_list(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match=r"^<stdin>:1: the URL has no host$"):
        read_url_list("-", stdin=io.BytesIO(b"http://\n"))


# -- pulls --------------------------------------------------------------------------------

BODIES = {
    "/d/a.json": b'{"a": 1}',
    "/e/a.json": b'{"a": 2}',
    "/d/pretty.json": b'{\n  "pretty": true\n}\n',
    "/d/report final.pdf": bytes(range(256)) * 3,
    "/d/x.bin": b"\x00\x01binary\xff",
}


def _list(server: FileServer) -> UrlList:
    return UrlList.from_lines(
        [
            server.url("/d/a.json"),
            server.url("/e/a.json"),
            server.url("/d/pretty.json", query=f"sig={SECRET}"),
            server.url("/d/report%20final.pdf", query=f"sig={SECRET}"),
            server.url("/d/x.bin") + "\tnamed.bin",
        ]
    )


def _client(*, concurrency: int = 1) -> Client:
    engine = EngineConfig(
        concurrency=concurrency,
        retry=RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.02),
    )
    return Client(config=Config(engine=engine), env={})


@pytest.mark.anyio
async def test_pull_into_jsonl_fields_and_bodies(tmp_path: Path) -> None:
    """JSON Lines: url without query, name, one-line JSON bodies embedded, others base64."""
    async with FileServer(BODIES) as server, _client() as client:
        source = UrlSource(transport=client.transport, urls=_list(server))
        report = await pull(source, JsonlSink(tmp_path / "out.jsonl"), concurrency=1)
        base = server.base
    assert (report.ok, report.downloaded, report.listed) == (True, 5, 5)
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["url"], r["name"]) for r in records] == [
        (f"{base}/d/a.json", "a.json"),
        (f"{base}/e/a.json", "a.json"),
        (f"{base}/d/pretty.json", "pretty.json"),
        (f"{base}/d/report%20final.pdf", "report final.pdf"),
        (f"{base}/d/x.bin", "named.bin"),
    ]
    assert lines[0].endswith(b',"content":{"a": 1}}')  # spliced byte for byte
    assert lines[1].endswith(b',"content":{"a": 2}}')
    # Multi-line JSON would have to be re-encoded to fit a line: kept byte for byte instead.
    assert base64.b64decode(records[2]["content_base64"]) == BODIES["/d/pretty.json"]
    assert base64.b64decode(records[3]["content_base64"]) == BODIES["/d/report final.pdf"]
    assert base64.b64decode(records[4]["content_base64"]) == BODIES["/d/x.bin"]
    assert SECRET.encode() not in b"".join(lines)
    assert server.auth_headers == 0


@pytest.mark.anyio
async def test_library_download_into_zip_with_a_shard(tmp_path: Path) -> None:
    """UrlSource.download writes a zip; two shards hold every entry exactly once."""
    halves: list[dict[str, bytes]] = []
    async with FileServer(BODIES) as server, _client(concurrency=4) as client:
        source = UrlSource(transport=client.transport, urls=_list(server))
        assert source.fingerprint == {"source": "urls", "list": _list(server).digest}
        for k in (1, 2):
            path = tmp_path / f"part{k}.zip"
            report = await source.download(sink=ZipSink(path), selection=Selection(shard=(k, 2)))
            assert report.ok
            with zipfile.ZipFile(path) as archive:
                halves.append({n: archive.read(n) for n in archive.namelist()})
    # Every body in exactly one shard (which one hangs on the keys, so on the port).
    bodies = sorted(body for half in halves for body in half.values())
    assert bodies == sorted(BODIES.values())
