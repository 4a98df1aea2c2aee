"""FakePlatforms, run_in_thread and the ``fake serve`` entry point."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import aiohttp
import pytest

import annopull.testing
from annopull.testing import (
    Chaos,
    FakeAnnoLab,
    FakeKognic,
    FakePlatforms,
    KognicProject,
    run_in_thread,
)
from annopull.testing.serve import _parser, _platforms, fake_serve

DESCRIBE_KEYS = {
    "kognic": {
        "api_url",
        "auth_url",
        "storage_url",
        "annotation_integration_url",
        "client_id",
        "client_secret",
        "project",
        "batch",
        "annotation_type",
    },
    "annolab": {"api_url", "api_key", "owner", "project"},
}


def fetch_token(auth_url: str, client_id: str, client_secret: str) -> dict[str, object]:
    """Ask a fake Kognic for a token with blocking urllib (as a sync caller would)."""
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
    ).encode()
    with urllib.request.urlopen(auth_url + "/v1/auth/oauth/token", data=form, timeout=5) as r:
        body: dict[str, object] = json.load(r)
    return body


@pytest.fixture
def server() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "annopull.testing.serve", "--count", "30", "--page-size", "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONWARNINGS": "error"},
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def read_line(process: subprocess.Popen[str], timeout: float = 15.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "fake serve printed nothing in time"
    return process.stdout.readline()


def test_serve_subprocess(server: subprocess.Popen[str]) -> None:
    """fake serve prints one JSON line that works, and exits 0 on SIGTERM with no more output."""
    described = json.loads(read_line(server))
    assert {name: set(part) for name, part in described.items()} == DESCRIBE_KEYS
    kognic = described["kognic"]
    assert kognic["api_url"].startswith("http://127.0.0.1:")
    token = fetch_token(kognic["auth_url"], kognic["client_id"], kognic["client_secret"])
    assert token["token_type"] == "Bearer"
    server.send_signal(signal.SIGTERM)
    stdout, stderr = server.communicate(timeout=10)
    assert server.returncode == 0, stderr
    assert stdout == ""
    assert "Traceback" not in stderr


def test_serve_sigint(server: subprocess.Popen[str]) -> None:
    """fake serve also stops cleanly on SIGINT."""
    json.loads(read_line(server))
    server.send_signal(signal.SIGINT)
    _, stderr = server.communicate(timeout=10)
    assert server.returncode == 0, stderr


def test_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    """--help explains the options and returns 0."""
    assert fake_serve(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--count", "--content-size", "--annolab-export-size", "--workdir", "SIGTERM"):
        assert option in out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--host", "0.0.0.0"], id="non-loopback"),
        pytest.param(["--count", "many"], id="not-a-number"),
        pytest.param(["--page-size", "0"], id="invalid-project"),
    ],
)
def test_serve_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad arguments exit 2 with a message on stderr and nothing on stdout."""
    assert fake_serve(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error" in captured.err


def test_run_in_thread() -> None:
    """run_in_thread serves both fakes to sync code and stops them on exit."""
    platforms = FakePlatforms(kognic=FakeKognic(client_secret="s3cret"))
    with run_in_thread(platforms) as running:
        auth_url = running.kognic.auth_url
        assert fetch_token(auth_url, "fake-client-id", "s3cret")["access_token"]
        assert running.describe()["annolab"]["api_url"] == running.annolab.api_url
    with pytest.raises(urllib.error.URLError):
        fetch_token(auth_url, "fake-client-id", "s3cret")


def test_run_in_thread_start_failure() -> None:
    """A fake that cannot start raises in the caller, not silently in the thread."""
    platforms = FakePlatforms()
    with (
        run_in_thread(platforms),
        pytest.raises(RuntimeError, match="already started"),
        run_in_thread(platforms),
    ):
        pass


@pytest.mark.anyio
async def test_platforms_describe() -> None:
    """describe() names both fakes' URLs, credentials and first project."""
    kognic = FakeKognic(
        projects=[KognicProject(project="p", batches=("b1",), annotation_types=("t",))]
    )
    async with FakePlatforms(kognic=kognic, annolab=FakeAnnoLab(api_key="k")) as platforms:
        described = platforms.describe()
        async with aiohttp.ClientSession() as session:
            url = described["annolab"]["api_url"] + "/v1/export/instruments"
            async with session.post(url, json={}) as response:
                assert response.status == 401
    assert {name: set(part) for name, part in described.items()} == DESCRIBE_KEYS
    assert (described["kognic"]["project"], described["kognic"]["batch"]) == ("p", "b1")
    assert described["kognic"]["annotation_type"] == "t"
    assert described["annolab"]["api_key"] == "k"
    assert not platforms.kognic.started
    assert not platforms.annolab.started


def test_all_is_sorted_and_complete() -> None:
    """annopull.testing.__all__ is sorted and names every public export."""
    names = annopull.testing.__all__
    assert names == sorted(names)
    public = {
        name
        for name, value in vars(annopull.testing).items()
        if not name.startswith("_") and not isinstance(value, type(annopull.testing))
    }
    assert set(names) == public


CHAOS_FLAGS = (
    "--chaos-seed",
    "--chaos-targets",
    "--latency-mean",
    "--latency-spread",
    "--latency-shape",
    "--error-rate",
    "--rate-limit",
    "--rate-burst",
    "--cut-rate",
    "--stall-rate",
    "--stall",
    "--wrong-length-rate",
    "--malformed-rate",
    "--auth-down-for",
    "--auth-down-requests",
    "--export-error-rate",
    "--export-stuck-rate",
    "--annolab-url-ttl",
)


def test_serve_help_documents_chaos(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names every chaos flag and says the knobs are deterministic for a seed."""
    assert fake_serve(["--help"]) == 0
    out = capsys.readouterr().out
    for option in CHAOS_FLAGS:
        assert option in out
    assert "treated alike in every run" in " ".join(out.split())


def test_serve_chaos_flags_reach_both_fakes() -> None:
    """The chaos flags build one Chaos for both fakes; without them there is none."""
    argv = [
        "--seed",
        "4",
        "--latency-mean",
        "0.02",
        "--latency-spread",
        "0.5",
        "--latency-shape",
        "lognormal",
        "--error-rate",
        "0.1",
        "--rate-limit",
        "50",
        "--rate-burst",
        "10",
        "--cut-rate",
        "0.05",
        "--stall-rate",
        "0.01",
        "--stall",
        "2",
        "--wrong-length-rate",
        "0.02",
        "--malformed-rate",
        "0.03",
        "--auth-down-for",
        "1.5",
        "--auth-down-requests",
        "2",
        "--export-error-rate",
        "0.2",
        "--export-stuck-rate",
        "0.1",
        "--chaos-targets",
        "content,search",
        "--annolab-url-ttl",
        "30",
    ]
    platforms = _platforms(_parser().parse_args(argv))
    expected = Chaos(
        seed=4,
        latency=0.02,
        latency_spread=0.5,
        latency_shape="lognormal",
        error_rate=0.1,
        rate_limit=50.0,
        rate_burst=10,
        cut_rate=0.05,
        stall_rate=0.01,
        stall=2.0,
        wrong_length_rate=0.02,
        malformed_rate=0.03,
        auth_down_for=1.5,
        auth_down_requests=2,
        export_error_rate=0.2,
        export_stuck_rate=0.1,
        targets=frozenset({"content", "search"}),
    )
    assert platforms.kognic.chaos == expected
    assert platforms.annolab.chaos == expected
    assert _platforms(_parser().parse_args(["--chaos-seed", "9"])).kognic.chaos is None
    seeded = _platforms(_parser().parse_args(["--chaos-seed", "9", "--cut-rate", "1"]))
    assert seeded.kognic.chaos == Chaos(seed=9, cut_rate=1.0)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--error-rate", "2"], id="rate-above-one"),
        pytest.param(["--chaos-targets", "content,nowhere"], id="unknown-target"),
        pytest.param(["--latency-shape", "pareto"], id="unknown-shape"),
    ],
)
def test_serve_bad_chaos_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Chaos values out of range exit 2 with a message, like any bad argument."""
    assert fake_serve(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error" in captured.err


AUTH_DOWN = ("--auth-down-requests", "1", "--chaos-seed", "3")


def test_serve_chaos_subprocess() -> None:
    """fake serve with --auth-down-requests answers the first token request 503, then works."""
    process = subprocess.Popen(
        [sys.executable, "-m", "annopull.testing.serve", "--count", "5", *AUTH_DOWN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONWARNINGS": "error"},
    )
    try:
        kognic = json.loads(read_line(process))["kognic"]
        credentials = (kognic["auth_url"], kognic["client_id"], kognic["client_secret"])
        with pytest.raises(urllib.error.HTTPError) as refused:
            fetch_token(*credentials)
        with refused.value:  # an HTTPError holds the connection until closed
            assert refused.value.code == 503
            assert refused.value.headers["Retry-After"] == "1"
        assert fetch_token(*credentials)["token_type"] == "Bearer"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, stderr
