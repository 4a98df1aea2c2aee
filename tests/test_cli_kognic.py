"""``annopull kognic`` end to end against the fake Kognic: outputs, exit codes, messages.

The CLI runs in-process through :func:`annopull._cli.main` (the fake on its own thread), and
as a real subprocess where a pipe or a signal is the point.
"""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from annopull._cli import main
from annopull.testing import FakeKognic, FakePlatforms, Fault, KognicProject, run_in_thread

PROJECT = KognicProject(
    project="P",
    batches=("a", "b"),
    annotation_types=("T",),
    count=40,
    page_size=6,
    content_size=2000,
)
BAD_SECRET = "wr0ng-S3CRET-do-not-print"


def _env(fake: FakeKognic) -> dict[str, str]:
    return {
        "ANNOPULL_KOGNIC_API_URL": fake.api_url,
        "ANNOPULL_KOGNIC_AUTH_URL": fake.auth_url,
        "ANNOPULL_ENGINE_BACKOFF_BASE": "0.01",
        "ANNOPULL_ENGINE_BACKOFF_MAX": "0.05",
        "KOGNIC_CLIENT_ID": fake.client_id,
        "KOGNIC_CLIENT_SECRET": fake.client_secret,
    }


@pytest.fixture
def fake(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKognic]:
    kognic = FakeKognic(projects=[PROJECT])
    monkeypatch.chdir(tmp_path)
    with run_in_thread(FakePlatforms(kognic=kognic)):
        for name, value in _env(kognic).items():
            monkeypatch.setenv(name, value)
        yield kognic


def _pull(*extra: str, output: str = "out.zip", batch: str | None = "a") -> int:
    argv = ["kognic", "--project", "P", "--annotation-type", "T", "-o", output, "-q", *extra]
    if batch is not None:
        argv += ["--batch", batch]
    return main(argv)


def _cli_argv(
    *before: str, output: str = "out.zip", batch: str | None = "a", after: Sequence[str] = ()
) -> list[str]:
    """``python -m annopull [before] kognic --project P ... -o output -q [after]``."""
    argv = [sys.executable, "-m", "annopull", *before, "kognic", "--project", "P"]
    argv += ["--annotation-type", "T", *(["--batch", batch] if batch is not None else [])]
    return [*argv, "-o", output, "-q", *after]


def _run_cli(
    fake: FakeKognic,
    cwd: Path,
    *before: str,
    output: str = "out.zip",
    batch: str | None = "a",
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """Run the CLI as a subprocess against ``fake`` to its end (stdout and stderr piped)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("text", True)
    return subprocess.run(
        _cli_argv(*before, output=output, batch=batch),
        env={**os.environ, **_env(fake)},
        cwd=cwd,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
        **kwargs,
    )


def _expected_entries(fake: FakeKognic, batch: str | None = "a") -> dict[str, bytes]:
    return {f"{e.scene_uuid}.json": e.content for e in fake.expected("P", "T", batch)}


def _zip(data: bytes | Path) -> dict[str, bytes]:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with zipfile.ZipFile(source) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert len(names) == len(set(names))
        return {name: archive.read(name) for name in names}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("annopull: error:")]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    "output",
    [
        pytest.param("out.zip", id="zip"),
        pytest.param("folder/", id="folder"),
        pytest.param("existing", id="existing-folder"),
        pytest.param("out.jsonl", id="jsonl"),
    ],
)
def test_pull_each_output_kind(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str
) -> None:
    """Each -o kind gets exactly the served annotations; stderr ends with a summary line."""
    (tmp_path / "existing").mkdir()
    assert _pull("--summary", "s.json", output=output) == 0
    expected = _expected_entries(fake)
    target = tmp_path / output
    if output.endswith(".zip"):
        assert _zip(target) == expected
    elif output.endswith(".jsonl"):
        lines = [json.loads(line) for line in target.read_bytes().splitlines()]
        assert {f"{d['scene_uuid']}.json": d["content"] for d in lines} == {
            name: json.loads(content) for name, content in expected.items()
        }
        assert len(lines) == len(expected)
    else:
        assert {p.name: p.read_bytes() for p in target.iterdir()} == expected
    summary = json.loads((tmp_path / "s.json").read_bytes())
    assert summary["status"] == "complete"
    assert (summary["listed"], summary["downloaded"], summary["failed"]) == (20, 20, [])
    stderr = capsys.readouterr().err
    assert "20 annotations" in stderr
    assert "0 failed" in stderr
    assert _error_lines(stderr) == []
    assert fake.stats.storage_requests_with_auth_header == 0


def test_stdout_zip_through_a_real_pipe(fake: FakeKognic, tmp_path: Path) -> None:
    """`-o -` in a subprocess writes a streamed zip to its stdout pipe that zipfile reads whole."""
    proc = _run_cli(fake, tmp_path, output="-", batch=None, text=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert _zip(proc.stdout) == _expected_entries(fake, batch=None)
    assert b"Traceback" not in proc.stderr
    assert _files(tmp_path) == []  # nothing spilled beside it: no .part, no journal


def test_failed_items_exit_1_and_listed_in_summary(
    fake: FakeKognic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Items failing every attempt make exit 1; --summary lists each; the rest is kept."""
    victims = [e.scene_uuid for e in fake.expected("P", "T", "a")][:2]
    for victim in victims:
        fake.faults.add(Fault(target="content", status=503, times=100, match=victim))
    monkeypatch.setenv("ANNOPULL_ENGINE_MAX_ATTEMPTS", "2")
    code = _pull("--summary", "summary.json")
    assert code == 1
    summary = json.loads((tmp_path / "summary.json").read_bytes())
    assert summary["status"] == "partial"
    assert sorted(f["item"] for f in summary["failed"]) == sorted(victims)
    for failure in summary["failed"]:
        assert "HTTP 503" in failure["reason"]
        assert "after 2 attempts" in failure["reason"]
        assert "signature" not in failure["reason"]
        assert f"/o/P/T/{failure['item']}/v0" in failure["reason"]
    assert (summary["downloaded"], summary["listed"]) == (18, 20)
    expected = _expected_entries(fake)
    for victim in victims:
        del expected[f"{victim}.json"]
    assert _zip(tmp_path / "out.zip") == expected
    stderr = capsys.readouterr().err
    assert "2 failed" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("output", ["out.zip", "folder/", "out.jsonl", "-"])
def test_bad_credentials_exit_2_one_line_nothing_left(
    fake: FakeKognic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    output: str,
) -> None:
    """A refused secret: exit 2, one error line without the secret, no output files."""
    monkeypatch.setenv("KOGNIC_CLIENT_SECRET", BAD_SECRET)
    assert _pull(output=output) == 2
    captured = capfd.readouterr()
    errors = _error_lines(captured.err)
    assert len(errors) == 1
    assert "refused the client credentials" in errors[0]
    assert repr(fake.client_id) in errors[0]
    assert BAD_SECRET not in captured.err + captured.out
    assert "Traceback" not in captured.err
    assert captured.out == ""  # not even an empty zip on stdout
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(["--project", "nope"], "no project 'nope'", id="project"),
        pytest.param(["--project", "P", "--batch", "zzz"], "no batch 'zzz'", id="batch"),
    ],
)
def test_unknown_project_exit_2_nothing_left(
    fake: FakeKognic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    words: str,
) -> None:
    """A project or batch that does not exist: exit 2 with the platform's words, no files."""
    code = main(["kognic", *argv, "--annotation-type", "T", "-o", "out.zip", "-q"])
    assert code == 2
    stderr = capsys.readouterr().err
    errors = _error_lines(stderr)
    assert len(errors) == 1
    assert words in errors[0]
    assert "HTTP 404" in errors[0]
    assert "Traceback" not in stderr
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    "unset",
    [
        pytest.param(("KOGNIC_CLIENT_ID", "KOGNIC_CLIENT_SECRET"), id="none"),
        pytest.param(("KOGNIC_CLIENT_SECRET",), id="no-secret"),
    ],
)
def test_missing_credentials_exit_2(
    fake: FakeKognic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unset: tuple[str, ...],
) -> None:
    """Without credentials nothing is requested: exit 2 telling what to set."""
    for name in unset:
        monkeypatch.delenv(name)
    assert _pull() == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1
    assert "KOGNIC_CLIENT_ID and KOGNIC_CLIENT_SECRET" in errors[0]
    assert fake.stats.token_requests == 0
    assert _files(tmp_path) == []


def test_bad_config_file_exit_2(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown key in --config is a one-line exit 2 naming the key and the file."""
    (tmp_path / "c.toml").write_text("[engine]\nconcurency = 4\n")
    code = main(
        [
            "--config",
            "c.toml",
            "kognic",
            "--project",
            "P",
            "--annotation-type",
            "T",
            "-o",
            "out.zip",
        ]
    )
    assert code == 2
    errors = _error_lines(capsys.readouterr().err)
    assert errors == ["annopull: error: unknown setting [engine] concurency in c.toml"]


def test_config_flag_beats_env_and_file(
    fake: FakeKognic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--concurrency overrides env, which overrides the file (a bad file value is shadowed)."""
    (tmp_path / "c.toml").write_text("[engine]\nconcurrency = 1\nmax_attempts = 1\n")
    monkeypatch.setenv("ANNOPULL_ENGINE_MAX_ATTEMPTS", "5")
    fake.faults.add(Fault(target="content", status=503, times=2))
    code = main(
        [
            "--config",
            "c.toml",
            "kognic",
            "--project",
            "P",
            "--annotation-type",
            "T",
            "--batch",
            "b",
            "-o",
            "out.zip",
            "-q",
            "--concurrency",
            "4",
        ]
    )
    assert code == 0, capsys.readouterr().err  # env's 5 attempts, not the file's 1, applied
    assert _zip(tmp_path / "out.zip") == _expected_entries(fake, "b")


def test_listing_failure_mid_run_is_one_line_exit_1(
    fake: FakeKognic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A later search page failing for good ends with one error line and exit 1, no traceback."""
    monkeypatch.setenv("ANNOPULL_ENGINE_MAX_ATTEMPTS", "2")
    fake.faults.add(Fault(target="search"), Fault(target="search", status=500, times=50))
    code = _pull()
    assert code == 1
    stderr = capsys.readouterr().err
    errors = _error_lines(stderr)
    assert len(errors) == 1
    assert "HTTP 500" in errors[0]
    assert "Traceback" not in stderr


def test_usage_error_exit_2(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing required option is argparse's exit 2 with a usage message."""
    with pytest.raises(SystemExit) as info:
        main(["kognic", "--annotation-type", "T", "-o", "out.zip"])
    assert info.value.code == 2
    assert "--project" in capsys.readouterr().err


def test_sigint_exit_130_without_traceback(fake: FakeKognic, tmp_path: Path) -> None:
    """SIGINT during a pull exits 130 with a short message and no traceback."""
    for entry in fake.expected("P", "T", "a"):
        fake.faults.add(Fault(target="content", stall=0.5, match=entry.scene_uuid))
    proc = subprocess.Popen(
        _cli_argv(after=["--concurrency", "1"]),
        env={**os.environ, **_env(fake)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while sum(fake.stats.content_requests.values()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    assert b"SIGINT" in err
    assert not (tmp_path / "out.zip").exists()


def test_readme_main_job_with_fake(
    clean_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's --fake command makes a valid 5,000-entry zip equal to what the fake serves."""
    monkeypatch.chdir(tmp_path)
    argv = [
        "--fake",
        "kognic",
        "--project",
        "demo",
        "--batch",
        "demo",
        "--annotation-type",
        "demo",
        "-o",
        "out.zip",
    ]
    assert main(argv) == 0
    expected = {f"{e.scene_uuid}.json": e.content for e in FakeKognic().expected("demo", "demo")}
    assert len(expected) == 5000
    assert _zip(tmp_path / "out.zip") == expected
    assert "5000 annotations" in capsys.readouterr().err
    assert _files(tmp_path) == ["out.zip"]
    if shutil.which("unzip"):
        test = subprocess.run(
            ["unzip", "-tqq", "out.zip"], capture_output=True, text=True, timeout=60, check=False
        )
        assert test.returncode == 0, test.stdout + test.stderr


def test_output_in_a_missing_folder_exit_2(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o into a folder that does not exist is one line naming the folder, exit 2."""
    assert _pull(output="missing/out.zip") == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"annopull: error: the output's folder does not exist: {Path('missing')}"
    ]
    assert _files(tmp_path) == []


def test_unwritable_output_is_one_line_exit_1(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OS error writing the output (here a folder in the .part's place) is one line, exit 1."""
    (tmp_path / "out.zip.part").mkdir()
    assert _pull() == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "annopull: error: cannot write the output: Is a directory (path out.zip.part)"
    ]
    assert "Traceback" not in err


def test_errors_before_the_pull_print_no_progress(
    fake: FakeKognic, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -q, a credentials error is still the only line on stderr (no empty progress)."""
    monkeypatch.delenv("KOGNIC_CLIENT_SECRET")
    argv = ["kognic", "--project", "P", "--annotation-type", "T", "-o", "out.zip"]
    assert main(argv) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_verbose_logs_retries_without_secrets(fake: FakeKognic, tmp_path: Path) -> None:
    """-v logs each retry and the token fetch, with URLs cut before their signatures."""
    fake.faults.add(Fault(target="content", status=503, times=2))
    done = _run_cli(fake, tmp_path, "-v")
    assert done.returncode == 0, done.stderr
    retries = [line for line in done.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 2, done.stderr
    assert all(f"{fake.storage_url}/o/P/T/" in line for line in retries)
    assert "server answered 503" in retries[0]
    assert "fetched a Kognic access token" in done.stderr
    for secret in ("signature=", "expires=", fake.client_secret, "Bearer"):
        assert secret not in done.stderr


def test_zip_to_a_terminal_is_refused(fake: FakeKognic, tmp_path: Path) -> None:
    """-o - with stdout on a terminal exits 2 instead of spraying binary at the user."""
    master, terminal = pty.openpty()
    try:
        done = _run_cli(fake, tmp_path, output="-", stdout=terminal)
    finally:
        os.close(terminal)
        os.close(master)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "annopull: error: refusing to write a zip to a terminal: redirect stdout, or use -o FILE"
    ]
    assert sum(fake.stats.content_requests.values()) == 0


@pytest.mark.parametrize("value", ["0", "1025", "100000", "many"])
def test_concurrency_out_of_range_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--concurrency outside 1..1024 exits 2 with one line saying the range, fetching nothing."""
    with pytest.raises(SystemExit) as exited:
        _pull("--concurrency", value)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--concurrency" in err
    assert "1024" in err or "at least 1" in err or "whole number" in err


def test_an_empty_output_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """-o '' is exit 2 with one line, not a pull into the current folder."""
    assert _pull(output="") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "annopull: error: the output is empty: name a .zip or .jsonl file, a folder/, or -"
    ]
