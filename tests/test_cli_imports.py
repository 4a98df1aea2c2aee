"""What the CLI imports: building the parser loads no source, client or display, and a Kognic
pull to a zip loads neither the S3 client, the AnnoLab source nor rich (start-up time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from annopull.testing import FakeKognic, FakePlatforms, KognicProject, run_in_thread

#: Modules a Kognic pull to a local zip has no use for.
NOT_FOR_KOGNIC = ("annopull._storage.s3", "annopull._sources.annolab", "rich", "xml")
#: Modules building the parser (--help, --version, a usage error) has no use for.
NOT_FOR_PARSER = (
    *NOT_FOR_KOGNIC,
    "aiohttp",
    "annopull._client",
    "annopull._pipeline.pull",
    "annopull._sinks",
    "annopull._sources",
    "annopull._progress",
    "importlib.metadata",
)

#: Run in a fresh interpreter: the CLI's main() with argv, then the loaded modules as JSON.
PROBE = """\
import json, sys
from annopull._cli import build_parser, main
if len(sys.argv) > 1:
    code = main(sys.argv[1:])
else:
    build_parser()
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _loaded(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> set[str]:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["code"] == 0, run.stderr
    return set(result["modules"])


def _among(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in prefixes))


@pytest.fixture
def fake(clean_env: None) -> Iterator[FakeKognic]:
    kognic = FakeKognic(
        projects=[KognicProject(project="P", batches=("a",), annotation_types=("T",), count=5)]
    )
    with run_in_thread(FakePlatforms(kognic=kognic)):
        yield kognic


def test_building_the_parser_imports_no_source_client_or_display() -> None:
    """--help and usage errors cost only argparse and the settings: no aiohttp, rich, sources."""
    assert _among(_loaded(), NOT_FOR_PARSER) == []


def test_a_kognic_pull_to_a_zip_imports_no_s3_annolab_or_rich(
    fake: FakeKognic, tmp_path: Path
) -> None:
    """A quiet Kognic pull to a zip runs without the S3 client, the AnnoLab source or rich."""
    env = {
        "ANNOPULL_KOGNIC_API_URL": fake.api_url,
        "ANNOPULL_KOGNIC_AUTH_URL": fake.auth_url,
        "KOGNIC_CLIENT_ID": fake.client_id,
        "KOGNIC_CLIENT_SECRET": fake.client_secret,
    }
    argv = ["kognic", "--project", "P", "--batch", "a", "--annotation-type", "T"]
    modules = _loaded(*argv, "-o", "out.zip", "-q", env=env, cwd=tmp_path)
    assert (tmp_path / "out.zip").is_file()
    assert "annopull._sources.kognic" in modules
    assert _among(modules, NOT_FOR_KOGNIC) == []


def test_version_prints_the_installed_version() -> None:
    """`annopull --version` prints the package version and exits 0."""
    from annopull._version import __version__

    run = subprocess.run(
        [sys.executable, "-m", "annopull", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout == f"annopull {__version__}\n"
