"""``annopull kognic --transform/--validate/--workers`` as a real subprocess against the fake.

The transform module is written into the run's working folder, so these also prove that
MODULE is imported from the current directory, by the worker processes too. The fake
runs on a thread of this process, so its request counters show what the CLI asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from annopull.testing import FakeKognic, FakePlatforms, KognicProject, run_in_thread

PROJECT = KognicProject(
    project="P", annotation_types=("T",), count=30, page_size=7, invalid_scenes=frozenset({4})
)

CONVERT = '''
import orjson

def names(annotation):
    """The scene and its sorted object names."""
    if annotation.scene_uuid.endswith(("0", "2", "4")):
        raise KeyError("no such thing")
    objects = annotation.content["openlabel"]["objects"]
    return {"scene": annotation.scene_uuid, "names": sorted(o["name"] for o in objects.values())}

VALUE = 1
'''


@pytest.fixture
def fake(clean_env: None) -> Iterator[FakeKognic]:
    kognic = FakeKognic(projects=[PROJECT])
    with run_in_thread(FakePlatforms(kognic=kognic)):
        yield kognic


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "convert_for_cli.py").write_text(CONVERT)
    return tmp_path


def _run(
    fake: FakeKognic, cwd: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "annopull", "kognic", "--project", "P"]
    argv += ["--annotation-type", "T", "-o", "out.zip", "-q", "--summary", "summary.json"]
    environment = {
        **os.environ,
        "ANNOPULL_KOGNIC_API_URL": fake.api_url,
        "ANNOPULL_KOGNIC_AUTH_URL": fake.auth_url,
        "KOGNIC_CLIENT_ID": fake.client_id,
        "KOGNIC_CLIENT_SECRET": fake.client_secret,
        **(env or {}),
    }
    return subprocess.run(
        [*argv, *extra],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _entries(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {name: json.loads(archive.read(name)) for name in archive.namelist()}


def _converted(fake: FakeKognic) -> dict[str, Any]:
    """What ``names`` makes of each served scene (``None``: it raises)."""
    out: dict[str, Any] = {}
    for e in fake.expected("P", "T"):
        objects = orjson.loads(e.content)["openlabel"]["objects"]
        value = {"scene": e.scene_uuid, "names": sorted(o["name"] for o in objects.values())}
        out[e.scene_uuid] = None if e.scene_uuid.endswith(("0", "2", "4")) else value
    return out


def _no_requests(fake: FakeKognic) -> bool:
    stats = fake.stats
    return stats.token_requests == stats.search_requests == 0 and not stats.content_requests


def test_transform_from_the_current_folder_converts_and_names_what_it_raised_for(
    fake: FakeKognic, workdir: Path
) -> None:
    """Converted entries for all scenes but those it raised for: named, exit 1."""
    done = _run(fake, workdir, "--transform", "convert_for_cli:names", "--workers", "2")
    assert done.returncode == 1, done.stderr
    converted = _converted(fake)
    assert _entries(workdir / "out.zip") == {
        f"{scene}.json": value for scene, value in converted.items() if value is not None
    }
    summary = json.loads((workdir / "summary.json").read_text())
    raised = {scene for scene, value in converted.items() if value is None}
    assert raised
    assert {f["item"]: f["reason"] for f in summary["failed"]} == dict.fromkeys(
        raised, "transform raised KeyError: 'no such thing'"
    )
    assert summary["downloaded"] == len(converted) - len(raised)
    assert f"{len(raised)} failed" in done.stderr


def test_thread_workers_give_the_same_output(fake: FakeKognic, workdir: Path) -> None:
    """--workers-mode thread converts the same way."""
    done = _run(fake, workdir, "--transform", "convert_for_cli:names", "--workers-mode", "thread")
    assert done.returncode == 1, done.stderr
    assert _entries(workdir / "out.zip") == {
        f"{scene}.json": value for scene, value in _converted(fake).items() if value is not None
    }


def test_validate_fails_the_invalid_document_and_keeps_the_rest(
    fake: FakeKognic, workdir: Path
) -> None:
    """--validate: the one invalid scene is a failure, left out; the others byte for byte."""
    done = _run(fake, workdir, "--validate", "--workers", "1")
    assert done.returncode == 1, done.stderr
    served = list(fake.expected("P", "T"))
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["failed"] == [
        {
            "item": served[4].scene_uuid,
            "reason": "not valid OpenLABEL, left out of the output: "
            "openlabel.metadata.schema_version: Input should be '1.0.0'",
        }
    ]
    with zipfile.ZipFile(workdir / "out.zip") as archive:
        held = {name: archive.read(name) for name in archive.namelist()}
    assert held == {f"{e.scene_uuid}.json": e.content for i, e in enumerate(served) if i != 4}
    assert "not valid OpenLABEL" in done.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            ["--transform", "missing_module_abc:f"],
            "cannot import missing_module_abc for missing_module_abc:f: ModuleNotFoundError",
            id="no-module",
        ),
        pytest.param(
            ["--transform", "convert_for_cli:nothing"],
            "convert_for_cli has no 'nothing'",
            id="no-function",
        ),
        pytest.param(
            ["--transform", "convert_for_cli:VALUE"],
            "convert_for_cli:VALUE is a int, not a function",
            id="not-callable",
        ),
        pytest.param(
            ["--transform", "convert_for_cli"], "a function is named MODULE:FUNCTION", id="spec"
        ),
        pytest.param(["--workers", "2"], "--workers and --workers-mode need", id="workers-alone"),
    ],
)
def test_a_transform_that_cannot_be_used_is_exit_2_before_any_request(
    fake: FakeKognic, workdir: Path, extra: list[str], message: str
) -> None:
    """Exit 2 with one error line, and the fake was asked nothing; no output left."""
    done = _run(fake, workdir, *extra)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1
    assert errors[0].startswith("annopull: error: ")
    assert message in errors[0]
    assert _no_requests(fake)
    assert not (workdir / "out.zip").exists()


def test_workers_out_of_range_is_a_usage_error(fake: FakeKognic, workdir: Path) -> None:
    """--workers 0 is refused by the parser (exit 2), nothing requested."""
    done = _run(fake, workdir, "--validate", "--workers", "0")
    assert done.returncode == 2
    assert "--workers: must be at least 1" in done.stderr
    assert _no_requests(fake)


def test_validate_without_kognic_openlabel_names_the_pip_command(
    fake: FakeKognic, workdir: Path
) -> None:
    """With kognic-openlabel blocked from import: exit 2, the pip command, no request."""
    blocker = workdir / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['kognic.openlabel'] = None\n"
    )
    path = os.pathsep.join(p for p in [str(blocker), os.environ.get("PYTHONPATH", "")] if p)
    done = _run(fake, workdir, "--validate", env={"PYTHONPATH": path})
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "annopull: error: validating OpenLABEL needs kognic-openlabel: "
        "pip install 'annopull[openlabel]'"
    )
    assert _no_requests(fake)


def test_help_teaches_the_transform_options() -> None:
    """--help lists the options and an example of each."""
    done = subprocess.run(
        [sys.executable, "-m", "annopull", "kognic", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for text in ("--transform MODULE:FUNCTION", "--validate", "--workers N", "--workers-mode"):
        assert text in done.stdout
    assert "--transform mypkg.convert:from_openlabel --workers 4" in done.stdout
    assert "annopull.Renamed(content" in done.stdout


def test_readme_transform_example_runs_as_written(fake: FakeKognic, tmp_path: Path) -> None:
    """The README's convert.py, run by its own command line, writes one CSV per scene."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = readme.split("```py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "convert.py").write_text(code)
    done = _run(fake, tmp_path, "--transform", "convert:boxes", "--workers", "1")
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        held = {name: archive.read(name).decode() for name in archive.namelist()}
    expected = {}
    for e in fake.expected("P", "T"):
        objects = orjson.loads(e.content)["openlabel"]["objects"]
        rows = [f"{uid},{obj['type']}" for uid, obj in sorted(objects.items())]
        expected[f"{e.scene_uuid}.csv"] = "\n".join(rows) + "\n"
    assert held == expected
