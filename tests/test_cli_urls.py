"""``annopull urls`` end to end against a loopback file server: outputs, faults, exit codes.

The CLI runs in-process through :func:`annopull._cli.main` (the server on its own thread),
and as a real subprocess where a pipe, stdin or a signal is the point.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from annopull._cli import main
from annopull._pipeline.pull import in_shard
from annopull.testing import Fault
from annopull.testing.platforms import run_in_thread
from test_resume import journal_count, journaled, wait_for
from test_urls import SECRET, FileServer, closed_port

ENV = {"ANNOPULL_ENGINE_BACKOFF_BASE": "0.01", "ANNOPULL_ENGINE_BACKOFF_MAX": "0.05"}

BODIES = {
    "/d/a.json": b'{"a": 1}',
    "/e/a.json": b'{"a": [2, "two"]}',
    "/d/report final.pdf": bytes(range(256)) * 40,
    "/d/x.bin": b"\x00\x01 not json \xff",
    "/d/dir/": b"<html>an index</html>",
}


@pytest.fixture
def server(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FileServer]:
    monkeypatch.chdir(tmp_path)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    with run_in_thread(FileServer(BODIES)) as files:
        yield files


def _demo_list(server: FileServer) -> str:
    """A list naming entries each way: from the path, decoded, deduped, NAMEd, an index."""
    return "\n".join(
        [
            "# demo list",
            "",
            server.url("/d/a.json"),
            server.url("/e/a.json"),
            server.url("/d/report%20final.pdf", query=f"sig={SECRET}&expires=9"),
            server.url("/d/x.bin") + "\tnamed/x.bin",
            "   # an indented comment",
            server.url("/d/dir/"),
            "",
        ]
    )


#: The demo list's entries, in list order (fetched one at a time, so named in that order).
EXPECTED = {
    "a.json": BODIES["/d/a.json"],
    "a (2).json": BODIES["/e/a.json"],
    "report final.pdf": BODIES["/d/report final.pdf"],
    "named/x.bin": BODIES["/d/x.bin"],
    "index": BODIES["/d/dir/"],
}


def _write_list(text: str, name: str = "urls.txt") -> str:
    Path(name).write_text(text, encoding="utf-8")
    return name


def _urls(*argv: str) -> int:
    return main(["urls", *argv, "-q"])


def _zip(data: bytes | Path) -> dict[str, bytes]:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with zipfile.ZipFile(source) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert len(names) == len(set(names))
        return {name: archive.read(name) for name in names}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("annopull: error:")]


def _jsonl_line(url: str, name: str, body: bytes) -> bytes:
    """The line JSON Lines output holds for one entry, built with the stdlib's encoder."""
    fields = json.dumps({"url": url, "name": name}, separators=(",", ":"))[:-1]
    try:
        json.loads(body)
    except ValueError:
        encoded = json.dumps(base64.b64encode(body).decode())
        return f'{fields},"content_base64":{encoded}}}\n'.encode()
    return fields.encode() + b',"content":' + body + b"}\n"


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANNOPULL_", "KOGNIC_"))}
    return env | ENV


def _run(cwd: Path, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """``python -m annopull urls ARGV -q`` to its end, stdout and stderr piped."""
    return subprocess.run(
        [sys.executable, "-m", "annopull", "urls", *argv, "-q"],
        env=_subprocess_env(),
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
        **kwargs,
    )


@pytest.mark.parametrize("output", ["out.zip", "folder/", "out.jsonl"])
def test_each_output_kind_holds_every_byte(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str
) -> None:
    """Zip, folder and JSON Lines hold exactly the served bodies under the expected names."""
    listing = _write_list(_demo_list(server))
    code = _urls(listing, "-o", output, "--concurrency", "1", "--summary", "s.json")
    assert code == 0
    target = tmp_path / output
    if output.endswith(".zip"):
        assert _zip(target) == EXPECTED
    elif output.endswith("/"):
        assert _files(target) == EXPECTED
    else:
        base = server.base
        urls = ["/d/a.json", "/e/a.json", "/d/report%20final.pdf", "/d/x.bin", "/d/dir/"]
        names = ["a.json", "a.json", "report final.pdf", "named/x.bin", "index"]
        expected = b"".join(
            _jsonl_line(base + url, name, body)
            for url, name, body in zip(urls, names, EXPECTED.values(), strict=True)
        )
        assert target.read_bytes() == expected
    summary = json.loads((tmp_path / "s.json").read_bytes())
    assert (summary["status"], summary["listed"], summary["downloaded"]) == ("complete", 5, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["urls.txt", "s.json", output.rstrip("/")]
    )
    stderr = capsys.readouterr().err
    assert "5 files" in stderr
    assert "0 failed" in stderr
    assert _error_lines(stderr) == []
    assert server.auth_headers == 0
    assert server.counts() == Counter(dict.fromkeys(BODIES, 1))
    assert SECRET.encode() not in (tmp_path / "s.json").read_bytes()
    if not output.endswith("/"):
        assert SECRET.encode() not in target.read_bytes()


def test_stdout_zip_through_a_real_pipe(server: FileServer, tmp_path: Path) -> None:
    """`-o -` writes a streamed zip to the stdout pipe that zipfile reads whole; nothing beside."""
    _write_list(_demo_list(server))
    done = _run(tmp_path, "urls.txt", "-o", "-", "--concurrency", "1")
    assert done.returncode == 0, done.stderr.decode()
    assert _zip(done.stdout) == EXPECTED
    assert b"Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["urls.txt"]


def test_stdin_list_with_blank_and_comment_lines(server: FileServer, tmp_path: Path) -> None:
    """LIST `-` reads stdin (CRLF, blanks and comments ignored) and fetches every URL once."""
    text = "\r\n".join(["", "# from a generator", _demo_list(server), "  ", "#end"])
    done = _run(tmp_path, "-", "-o", "out.zip", "--concurrency", "1", input=text.encode())
    assert done.returncode == 0, done.stderr.decode()
    assert _zip(tmp_path / "out.zip") == EXPECTED
    assert server.counts() == Counter(dict.fromkeys(BODIES, 1))


def test_5xx_and_cut_bodies_are_retried_and_delivered_intact(
    server: FileServer, tmp_path: Path
) -> None:
    """503s and a body cut mid-way are retried; every entry arrives byte for byte."""
    server.faults.add(
        Fault(target="file", status=503, times=2, match="/d/a.json"),
        Fault(target="file", status=502, retry_after="0", times=1, match="/d/dir/"),
        Fault(target="file", truncate_after=1000, times=2, match="/d/report final.pdf"),
    )
    listing = _write_list(_demo_list(server))
    assert _urls(listing, "-o", "out.zip", "--concurrency", "3") == 0
    assert sorted(_zip(tmp_path / "out.zip").values()) == sorted(EXPECTED.values())
    assert server.counts() == Counter(
        {"/d/a.json": 3, "/e/a.json": 1, "/d/report final.pdf": 3, "/d/x.bin": 1, "/d/dir/": 2}
    )


def test_404_and_refused_url_listed_in_summary_exit_1(
    server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 404 and a refused connection fail their items (exit 1, --summary); the rest is kept."""
    monkeypatch.setenv("ANNOPULL_ENGINE_MAX_ATTEMPTS", "2")
    refused = f"http://127.0.0.1:{closed_port()}/gone.bin"
    text = "\n".join(
        [
            _demo_list(server),
            server.url("/missing.json", query=f"sig={SECRET}"),
            f"{refused}\tgone.bin",
        ]
    )
    listing = _write_list(text)
    assert _urls(listing, "-o", "out.zip", "--concurrency", "1", "--summary", "s.json") == 1
    assert _zip(tmp_path / "out.zip") == EXPECTED
    raw = (tmp_path / "s.json").read_bytes()
    summary = json.loads(raw)
    assert (summary["status"], summary["listed"], summary["downloaded"]) == ("partial", 7, 5)
    failed = {f["item"]: f for f in summary["failed"]}
    missing_key = next(key for key in failed if key != "gone.bin")
    assert missing_key.startswith(server.base + "/missing.json (query sha256 ")
    assert failed[missing_key]["status"] == 404
    assert failed[missing_key]["url"] == server.base + "/missing.json"
    assert "HTTP 404" in failed[missing_key]["reason"]
    assert failed["gone.bin"]["attempts"] == 2
    assert "cannot connect" in failed["gone.bin"]["reason"]
    assert failed["gone.bin"]["url"] == refused
    stderr = capsys.readouterr().err
    assert "2 failed" in stderr
    assert "Traceback" not in stderr
    assert SECRET.encode() not in raw
    assert SECRET not in stderr


@pytest.mark.parametrize(
    ("line", "words", "output"),
    [
        pytest.param("ftp://h/a?{q}", "not an http or https URL", "out.zip", id="ftp-zip"),
        pytest.param("https:///a?{q}", "the URL has no host", "-", id="no-host-stdout"),
        pytest.param("http://127.0.0.1:99999/a?{q}", "bad port '99999'", "folder/", id="port"),
        pytest.param("http://h/a?{q}\t", "a TAB with an empty NAME", "out.jsonl", id="name-jsonl"),
        pytest.param("http://h/a\x1b?{q}", "control character U+001B", "out.zip", id="control"),
    ],
)
def test_malformed_line_exit_2_before_anything(
    server: FileServer,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    line: str,
    words: str,
    output: str,
) -> None:
    """A malformed line: exit 2 naming LIST:LINE, no output created, nothing requested."""
    bad = line.format(q=f"sig={SECRET}")
    text = "\n".join(["# list", server.url("/d/a.json"), bad, "more"])
    listing = _write_list(text)
    assert _urls(listing, "-o", output) == 2
    captured = capfd.readouterr()
    errors = _error_lines(captured.err)
    assert len(errors) == 1
    assert errors[0].startswith("annopull: error: urls.txt:3: ")
    assert words in errors[0]
    assert SECRET not in captured.err
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["urls.txt"]
    assert server.counts() == Counter()


def test_shards_together_hold_every_url_once(server: FileServer, tmp_path: Path) -> None:
    """--shard 1/2 and 2/2 are disjoint and together hold every URL exactly once."""
    names = [f"n{i:02d}.json" for i in range(20)]
    server.bodies.update({f"/s/{name}": f'{{"n": "{name}"}}'.encode() for name in names})
    listing = _write_list("\n".join(f"{server.url('/s/' + n)}\t{n}" for n in names))
    parts = []
    for k in (1, 2):
        assert _urls(listing, "-o", f"part{k}.zip", "--shard", f"{k}/2") == 0
        parts.append(_zip(tmp_path / f"part{k}.zip"))
    assert not parts[0].keys() & parts[1].keys()
    assert parts[0] | parts[1] == {n: server.bodies[f"/s/{n}"] for n in names}
    assert sorted(parts[0]) == [n for n in names if in_shard(n, (1, 2))]
    assert all(parts)
    assert server.counts() == Counter({f"/s/{n}": 1 for n in names})


def _counts_settled(server: FileServer) -> Counter[str]:
    """The server's request counts once requests a killed client already sent are in."""
    last, since = server.counts(), time.monotonic()
    while time.monotonic() - since < 0.3:
        time.sleep(0.05)
        if (now := server.counts()) != last:
            last, since = now, time.monotonic()
    return last


def test_sigkill_then_resume_fetches_only_what_was_not_saved(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed -9 mid-run, --resume (same list) completes without fetching saved URLs again."""
    # Past the first checkpoint (512 entries) with a quarter of the list still to come: the
    # stall caps the rate at concurrency / stall, so the kill lands well before the end.
    paths = [f"/k/f{i:03d}.bin" for i in range(800)]
    server.bodies.update({p: f"file {p} ".encode() * 30 for p in paths})
    listing = _write_list("\n".join(server.url(p) for p in paths))
    server.faults.add(Fault(target="file", stall=0.01, times=10**9))
    argv = [sys.executable, "-m", "annopull", "urls", listing, "-o", "out.zip", "-q"]
    process = subprocess.Popen(
        [*argv, "--concurrency", "8"],
        env=_subprocess_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    journal = tmp_path / "out.zip.journal"
    wait_for(lambda: journal_count(journal) > 0, process)
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    held = journaled(journal)
    before = _counts_settled(server)
    assert 0 < len(held) < len(paths)
    assert (tmp_path / "out.zip.part").exists()

    # Another list is another run: refused, nothing fetched.
    _write_list("\n".join(server.url(p) for p in paths[:-1]), "other.txt")
    assert _urls("other.txt", "-o", "out.zip", "--resume") == 2
    [error] = _error_lines(capsys.readouterr().err)
    assert "journal is for list " in error
    assert server.counts() == before

    server.faults.clear()
    assert _urls(listing, "-o", "out.zip", "--resume", "--summary", "s.json") == 0
    assert _zip(tmp_path / "out.zip") == {p.rpartition("/")[2]: server.bodies[p] for p in paths}
    assert not journal.exists()
    after = server.counts()
    saved = {key.removeprefix(server.base) for key in held}
    assert all(after[p] == before[p] for p in saved), "a saved URL was fetched again"
    assert all(after[p] - before[p] == 1 for p in paths if p not in saved)
    report = json.loads((tmp_path / "s.json").read_bytes())
    assert report["resumed"] is True
    assert (report["skipped"], report["downloaded"]) == (len(held), len(paths) - len(held))


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    """`annopull urls --help` explains LIST and shows examples; the top help lists urls."""
    with pytest.raises(SystemExit) as exited:
        main(["urls", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "URL<TAB>NAME" in out
    assert "annopull urls urls.txt -o files.zip" in out
    assert "examples:" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "annopull urls urls.txt -o files.zip" in capsys.readouterr().out
