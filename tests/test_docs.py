"""The documentation files stay true to the code."""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from annopull._cli import build_parser
from annopull._client import Client
from annopull._config import AnnoLabConfig, Config, KognicConfig, RetryPolicy, load_config
from annopull.testing import (
    AnnoLabProject,
    FakeAnnoLab,
    FakeKognic,
    FakePlatforms,
    KognicProject,
)

ROOT = Path(__file__).resolve().parent.parent


def test_config_example_is_the_defaults() -> None:
    """config.example.toml loads to exactly the built-in defaults (so its comments are true)."""
    assert load_config(ROOT / "config.example.toml", env={}) == Config()


def test_config_example_documents_every_setting() -> None:
    """Every setting of every section appears in config.example.toml, commented or not."""
    text = (ROOT / "config.example.toml").read_text()
    config = Config()
    sections = {
        "kognic": config.kognic,
        "annolab": config.annolab,
        "engine": config.engine,
        "storage": config.storage,
    }
    for section, value in sections.items():
        names = {f.name for f in dataclasses.fields(value)} - {"retry"}
        if section == "engine":
            names |= {f.name for f in dataclasses.fields(RetryPolicy)}
        for name in names:
            assert re.search(rf"^#? ?{name} = ", text, re.M), f"[{section}] {name} undocumented"
    assert set(tomllib.loads(text)) == set(sections)


def test_readme_commands_exist() -> None:
    """The README's marked set-up, demo and test commands are there for .ci/run to run."""
    readme = (ROOT / "README.md").read_text()
    for tag, command in [
        ("setup", "pip install -e '.[dev]'"),
        ("demo", "annopull --fake kognic --project demo --batch demo --annotation-type demo"),
        ("test", "pytest"),
    ]:
        block = readme.split(f"<!-- ci:{tag} -->", 1)[1].split("```")[1]
        assert block.strip().startswith(command), tag


def test_readme_examples_parse() -> None:
    """Every `annopull ...` line in the README parses with the real argument parser."""
    parser = build_parser()
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")
    pattern = r"^(annopull (?:--|kognic|annolab|urls|fake)[^#\n]*)"
    lines = [m.group(1) for m in re.finditer(pattern, readme, re.M)]
    assert len(lines) >= 8
    for line in lines:
        parsed, unknown = parser.parse_known_args(shlex.split(line)[1:])
        assert parsed.command, line
        assert not unknown or parsed.command == "fake", line


@pytest.mark.anyio
async def test_readme_library_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's library example runs as written against the fakes, and writes its files."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    monkeypatch.chdir(tmp_path)
    kognic = FakeKognic(
        projects=[KognicProject(project="P", batches=("B",), annotation_types=("T",), count=30)]
    )
    annolab = FakeAnnoLab(projects=[AnnoLabProject(owner="Group", name="Project", instruments=7)])
    async with FakePlatforms(kognic=kognic, annolab=annolab):
        config = Config(
            kognic=KognicConfig(api_url=kognic.api_url, auth_url=kognic.auth_url),
            annolab=AnnoLabConfig(api_url=annolab.api_url, poll_interval=0.01),
        )
        env = {
            "KOGNIC_CLIENT_ID": kognic.client_id,
            "KOGNIC_CLIENT_SECRET": kognic.client_secret,
            "ANNOLAB_API_KEY": annolab.api_key,
        }
        async with Client(config=config, env=env) as client:
            await namespace["pull"](client)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 30 + 1 + 7  # one line per annotation, the report, the instruments
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert len(archive.namelist()) == 30
    assert zipfile.ZipFile(tmp_path / "export.zip").testzip() is None
    assert zipfile.ZipFile(tmp_path / "project.zip").testzip() is None


@pytest.mark.anyio
async def test_readme_own_source_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's own-source example runs as written on the public pipeline and writes its zip."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n")[2].split("```", 1)[0]
    assert "annopull.pull(" in code
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    monkeypatch.chdir(tmp_path)
    report = await namespace["save_notes"]()
    assert (report.ok, report.downloaded, report.listed) == (True, 2, 2)
    with zipfile.ZipFile(tmp_path / "notes.zip") as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {
            "a.json": b'{"n": 1}',
            "b.json": b'{"n": 2}',
        }
    assert not (tmp_path / "notes.zip.journal").exists()
