"""``annopull annolab`` end to end: the CLI in-process (once as a subprocess) against the fake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from annopull._cli import main
from annopull.testing import AnnoLabProject, FakeAnnoLab, FakePlatforms, Fault, run_in_thread

PROJECTS = (
    AnnoLabProject(owner="Group", name="Alpha", instruments=40, pdf_size=50_000),
    AnnoLabProject(owner="Group", name="Beta", instruments=12, seed=1),
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("ANNOPULL_", "ANNOLAB_", "KOGNIC_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _fast_env(fake: FakeAnnoLab, *, key: str | None = None) -> dict[str, str]:
    return {
        "ANNOLAB_API_KEY": key if key is not None else fake.api_key,
        "ANNOPULL_ANNOLAB_API_URL": fake.api_url,
        "ANNOPULL_ANNOLAB_POLL_INTERVAL": "0.01",
        "ANNOPULL_ANNOLAB_POLL_MAX_INTERVAL": "0.05",
        "ANNOPULL_ENGINE_BACKOFF_BASE": "0.01",
        "ANNOPULL_ENGINE_BACKOFF_MAX": "0.05",
    }


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnnoLab]:
    annolab = FakeAnnoLab(projects=PROJECTS, workdir=tmp_path / "fake")
    with run_in_thread(FakePlatforms(annolab=annolab)):
        for name, value in _fast_env(annolab).items():
            monkeypatch.setenv(name, value)
        yield annolab


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("annopull: error:")]


def test_instruments_to_zip_with_summary(
    fake: FakeAnnoLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """A filtered instrument export lands byte-identical; stderr and --summary describe it."""
    code = main(
        [
            "annolab",
            "instruments",
            "--owner",
            "Group",
            "--project",
            "Alpha",
            "--tag",
            "Engine",
            "--source-filter",
            "Test_PDF.pdf",
            "--include-files",
            "-o",
            "export.zip",
            "--summary",
            "summary.json",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert (tmp_path / "export.zip").read_bytes() == fake.export_path(1).read_bytes()
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["ok"] == 1
    assert summary["failed"] == 0
    [entry] = summary["exports"]
    assert entry["project"] == "Group/Alpha"
    assert entry["bytes"] == (tmp_path / "export.zip").stat().st_size
    assert "annolab: 1 of 1 export(s) done" in err.splitlines()[-1]
    assert "next poll in" in err
    assert fake.stats.downloads_with_auth_header == 0
    assert fake.api_key not in err


def test_project_extracts_into_folder(fake: FakeAnnoLab, tmp_path: Path):
    """-o folder/ extracts the project export, with the asked-for files."""
    code = main(
        [
            "annolab",
            "project",
            "--group",
            "Group",
            "--project",
            "Beta",
            "--include-sources",
            "--include-annotation-types",
            "--layer",
            "Review",
            "-q",
            "-o",
            "out/",
        ]
    )
    assert code == 0
    with zipfile.ZipFile(fake.export_path(1)) as archive:
        expected = {name: archive.read(name) for name in archive.namelist()}
    written = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert written == expected
    assert "Beta.sources.jsonl" in written
    assert b"Default" not in written["Beta.annotations.jsonl"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param([], ["Alpha.zip", "Beta.zip"], id="zips"),
        pytest.param(["--extract"], ["Alpha", "Beta"], id="extracted"),
    ],
)
def test_several_projects_into_folder(
    fake: FakeAnnoLab, tmp_path: Path, extra: list[str], expected: list[str]
):
    """Several --project export concurrently into one folder: a zip or subfolder each."""
    args = ["annolab", "instruments", "--owner", "Group", "--project", "Alpha"]
    code = main([*args, "--project", "Beta", "-q", "-o", "many/", *extra])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == expected
    if not extra:
        built = sorted(fake.export_path(i).read_bytes() for i in (1, 2))
        assert sorted(p.read_bytes() for p in (tmp_path / "many").iterdir()) == built
    else:
        lines = (tmp_path / "many" / "Beta" / "instruments.json").read_bytes().splitlines()
        assert len(lines) == 12


def test_several_projects_need_a_folder(fake: FakeAnnoLab, capsys: pytest.CaptureFixture[str]):
    """Several --project with -o a file is a usage error (exit 2) that says how to fix it."""
    args = ["annolab", "instruments", "--owner", "Group", "--project", "Alpha"]
    code = main([*args, "--project", "Beta", "-o", "both.zip"])
    [line] = _errors(capsys.readouterr().err)
    assert code == 2
    assert "-o both.zip/" in line
    assert fake.stats.export_requests == 0


def test_errored_export_exits_1_with_platform_text(
    fake: FakeAnnoLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """An errored export exits 1 with AnnoLab's error text on one line and no traceback."""
    fake.fail_next_export("Export failed: PDF parser crashed")
    code = main(["annolab", "instruments", "--owner", "Group", "--project", "Alpha", "-o", "x.zip"])
    err = capsys.readouterr().err
    assert code == 1
    [line] = _errors(err)
    assert "PDF parser crashed" in line
    assert "Traceback" not in err
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param("not-the-key", "refused the API key", id="wrong"),
        pytest.param(None, "ANNOLAB_API_KEY", id="missing"),
    ],
)
def test_bad_key_exits_2_with_one_line(
    fake: FakeAnnoLab,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str | None,
    expected: str,
):
    """A wrong or missing API key exits 2 with one line that never shows a key."""
    if key is None:
        monkeypatch.delenv("ANNOLAB_API_KEY")
    else:
        monkeypatch.setenv("ANNOLAB_API_KEY", key)
    code = main(["annolab", "instruments", "--owner", "Group", "--project", "Alpha", "-o", "x.zip"])
    err = capsys.readouterr().err
    assert code == 2
    [line] = _errors(err)
    assert expected in line
    assert "Traceback" not in err
    assert "not-the-key" not in err
    assert fake.api_key not in err


def test_unknown_project_exits_2(fake: FakeAnnoLab, capsys: pytest.CaptureFixture[str]):
    """An unknown project exits 2 naming it."""
    code = main(["annolab", "project", "--group", "Group", "--project", "Nope", "-o", "x.zip"])
    [line] = _errors(capsys.readouterr().err)
    assert code == 2
    assert "Group/Nope" in line


def test_failed_download_keeps_part_and_next_run_resumes(
    fake: FakeAnnoLab,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """A download that keeps failing exits 1 keeping .part; the next run resumes it by Range."""
    monkeypatch.setenv("ANNOPULL_ENGINE_MAX_ATTEMPTS", "2")
    fake.faults.add(Fault(target="download", truncate_after=200_000, times=10))
    args = ["annolab", "instruments", "--owner", "Group", "--project", "Alpha", "--include-files"]
    assert main([*args, "-o", "a.zip"]) == 1
    [line] = _errors(capsys.readouterr().err)
    part = tmp_path / "a.zip.part"
    kept = part.stat().st_size
    assert kept > 0
    assert "a.zip.part" in line
    assert not (tmp_path / "a.zip").exists()

    fake.faults.clear()
    assert main([*args, "-o", "a.zip"]) == 0
    assert (tmp_path / "a.zip").read_bytes() == fake.export_path(2).read_bytes()
    assert f"bytes={kept}-" in fake.stats.download_ranges
    assert not part.exists()


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]):
    """--help of both exports shows examples, the key variable and the exit codes."""
    for command in ("instruments", "project"):
        with pytest.raises(SystemExit) as exited:
            main(["annolab", command, "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out
        assert f"annopull annolab {command} " in out
        assert "ANNOLAB_API_KEY" in out
        assert "exit codes:" in out


def test_sigint_while_polling_exits_130(tmp_path: Path):
    """Ctrl-C while the export is being built stops cleanly with exit 130 and no traceback."""
    slow = FakeAnnoLab(
        projects=PROJECTS,
        workdir=tmp_path / "fake",
        status_sequence=("initalized",) + ("started",) * 10_000 + ("finished",),
    )
    with run_in_thread(FakePlatforms(annolab=slow)):
        env = {**os.environ, **_fast_env(slow)}
        command = [sys.executable, "-m", "annopull", "annolab", "instruments"]
        process = subprocess.Popen(
            [*command, "--owner", "Group", "--project", "Alpha", "-q", "-o", "x.zip"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while slow.stats.status_requests < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 130
    assert "Traceback" not in err
