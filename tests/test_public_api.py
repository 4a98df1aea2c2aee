"""The public surface: ``annopull.__all__`` is honest, the error tree holds, the shape works."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

import annopull
from annopull.testing import FakeKognic, KognicProject

pytestmark = pytest.mark.anyio


def test_all_is_sorted_and_matches_public_names() -> None:
    """__all__ is sorted, has no duplicates, and equals the package's public non-module names."""
    assert annopull.__all__ == sorted(annopull.__all__)
    assert len(set(annopull.__all__)) == len(annopull.__all__)
    # dir(), not vars(): the root loads its names lazily, so vars() holds only those used so far.
    public = {
        name
        for name in dir(annopull)
        if not name.startswith("_") and not isinstance(getattr(annopull, name), types.ModuleType)
    }
    assert set(annopull.__all__) == public


@pytest.mark.parametrize("name", annopull.__all__)
def test_every_name_importable(name: str) -> None:
    """`from annopull import X` gives, for every name in __all__, the object of its home module."""
    namespace: dict[str, object] = {}
    exec(f"from annopull import {name}", namespace)
    module, attribute = annopull._HOMES[name]
    assert namespace[name] is getattr(importlib.import_module(module), attribute)
    assert namespace[name] is getattr(annopull, name)


def _type_checking_names() -> dict[str, tuple[str, str]]:
    """Public name -> (module, name) as the root's ``if typing.TYPE_CHECKING:`` block imports it."""
    tree = ast.parse(Path(annopull.__file__).read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "typing.TYPE_CHECKING"
    )
    names: dict[str, tuple[str, str]] = {}
    for node in block.body:
        if isinstance(node, ast.ImportFrom):
            assert node.module is not None
            names.update({a.asname or a.name: (node.module, a.name) for a in node.names})
        elif isinstance(node, ast.Assign):
            # An alias of a name imported above, e.g. DownloadReport = PullReport.
            assert isinstance(node.value, ast.Name)
            (target,) = node.targets
            assert isinstance(target, ast.Name)
            names[target.id] = names[node.value.id]
    return names


def test_lazy_homes_match_what_type_checkers_see() -> None:
    """The lazy loader's table names the same home for each name as the TYPE_CHECKING imports."""
    assert _type_checking_names() == annopull._HOMES
    assert set(annopull.__all__) | {"__version__"} == set(annopull._HOMES)


def test_unknown_name_is_an_attribute_error() -> None:
    """A name the package does not have raises AttributeError, as without the lazy loader."""
    with pytest.raises(AttributeError, match="no attribute 'Clinet'"):
        _ = annopull.Clinet  # type: ignore[attr-defined]
    assert not hasattr(annopull, "Clinet")


def test_importing_the_root_loads_no_submodule() -> None:
    """`import annopull` alone imports none of its modules, nor aiohttp or rich."""
    code = (
        "import sys, annopull; "
        "print(sorted(m for m in sys.modules if m.startswith(('annopull.', 'aiohttp', 'rich'))))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def _isort_key(name: str) -> tuple[int, str]:
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def _modules() -> list[str]:
    names = (
        info.name
        for info in pkgutil.walk_packages(annopull.__path__, prefix="annopull.")
        if not info.name.endswith("__main__")
    )
    return sorted(n for n in names if hasattr(importlib.import_module(n), "__all__"))


@pytest.mark.parametrize("module_name", _modules())
def test_each_module_all_is_sorted_and_defined(module_name: str) -> None:
    """Every module's __all__ is sorted and names things it defines.

    Plain sorting or ruff's isort-style order (CONSTANTS, Classes, functions) both count.
    """
    module = importlib.import_module(module_name)
    names = module.__all__
    assert list(names) in (sorted(names), sorted(names, key=_isort_key))
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []


def test_the_issue_names_are_public() -> None:
    """The names the README's library example uses are exported at the top level."""
    for name in ("Client", "ZipSink", "DirectorySink", "JsonlSink", "DownloadReport", "Config"):
        assert name in annopull.__all__


def test_error_tree() -> None:
    """Every error derives from AnnopullError; the value-ish ones are also ValueErrors."""
    errors = [
        annopull.ApiError,
        annopull.AuthError,
        annopull.ConfigError,
        annopull.ExportFailedError,
        annopull.InvalidResponseError,
        annopull.NetworkError,
        annopull.NotFoundError,
        annopull.RequestTimeoutError,
        annopull.ResumeError,
        annopull.RetryableStatusError,
        annopull.StorageError,
        annopull.TransferError,
        annopull.TruncatedBodyError,
        annopull.UnsafeEntryError,
        annopull.ZipFormatError,
    ]
    assert all(issubclass(cls, annopull.AnnopullError) for cls in errors)
    assert issubclass(annopull.ConfigError, ValueError)
    assert issubclass(annopull.ZipFormatError, ValueError)
    assert issubclass(annopull.NotFoundError, annopull.ApiError)
    assert issubclass(annopull.NotFoundError, LookupError)
    assert issubclass(annopull.UnsafeEntryError, annopull.ZipFormatError)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        pytest.param(annopull.RequestTimeoutError, TimeoutError, id="timeout"),
        pytest.param(annopull.NetworkError, ConnectionError, id="network"),
        pytest.param(annopull.TruncatedBodyError, None, id="truncated"),
        pytest.param(annopull.RetryableStatusError, None, id="retryable-status"),
        pytest.param(annopull.InvalidResponseError, None, id="invalid-response"),
    ],
)
def test_transfer_errors_by_cause(cls: type[annopull.TransferError], builtin: type | None) -> None:
    """Each cause is a TransferError (one except catches all), carrying the same context."""
    assert issubclass(cls, annopull.TransferError)
    if builtin is not None:
        assert issubclass(cls, builtin)
    err = cls("giving up", url="http://127.0.0.1:9/o?sig=abc", status=503, attempts=2, item="s")
    assert (err.url, err.status, err.attempts, err.item) == ("http://127.0.0.1:9/o", 503, 2, "s")
    assert str(err) == "giving up (item s, HTTP 503, http://127.0.0.1:9/o, after 2 attempts)"


def test_storage_error_is_an_os_error_with_a_path() -> None:
    """StorageError is an OSError outside the transfer branch and names the path it wrote."""
    assert issubclass(annopull.StorageError, OSError)
    assert not issubclass(annopull.StorageError, annopull.TransferError)
    err = annopull.StorageError("no space left", path=Path("/data/out.zip"), item="scene-1")
    assert err.path == "/data/out.zip"
    assert (err.errno, err.filename) == (None, None)
    assert str(err) == "no space left (item scene-1, path /data/out.zip)"
    with pytest.raises(OSError, match="no space left"):
        raise err


def test_error_message_carries_context_without_query() -> None:
    """An error built with url, status, attempts and item shows them all but the URL's query."""
    err = annopull.TransferError(
        "giving up",
        url="https://store.invalid/o/x.json?X-Goog-Signature=abc&expires=1",
        status=503,
        attempts=4,
        item="scene-1",
    )
    assert str(err) == (
        "giving up (item scene-1, HTTP 503, https://store.invalid/o/x.json, after 4 attempts)"
    )
    assert err.url == "https://store.invalid/o/x.json"
    assert "abc" not in repr(err)


async def test_library_shape_end_to_end(tmp_path: Path) -> None:
    """The issue's library example runs as written: iterate annotations, then one-call download."""
    project = KognicProject(
        project="P",
        batches=("B",),
        annotation_types=("T",),
        count=25,
        page_size=4,
        content_size=700,
    )
    async with FakeKognic(projects=[project]) as fake:
        env = {"KOGNIC_CLIENT_ID": fake.client_id, "KOGNIC_CLIENT_SECRET": fake.client_secret}
        overrides = {"kognic": {"api_url": fake.api_url, "auth_url": fake.auth_url}}
        async with annopull.Client.from_config(env=env, overrides=overrides) as client:
            seen = {}
            async with client.kognic.project_annotations("P", "T", batch="B") as annotations:
                async for ann in annotations:
                    seen[ann.scene_uuid] = (ann.created, ann.json())
            report = await client.kognic.download(
                "P", "T", batch="B", sink=annopull.ZipSink(tmp_path / "out.zip")
            )
        expected = list(fake.expected("P", "T", "B"))
    assert seen == {e.scene_uuid: (e.created, json.loads(e.content)) for e in expected}
    assert isinstance(report, annopull.DownloadReport)
    assert (report.ok, report.downloaded) == (True, 25)
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {
            f"{e.scene_uuid}.json": e.content for e in expected
        }


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("http://[::1]:9/x?q=1", "http://[::1]:9/x", id="ipv6"),
        pytest.param(
            "https://u:pw@h.example:8443/a?sig=1#f", "https://h.example:8443/a", id="userinfo"
        ),
        pytest.param("http://h:99999/x?y=1", "http://h:99999/x", id="bad-port"),
    ],
)
def test_error_urls_keep_the_host_as_written_and_drop_what_is_secret(url: str, shown: str) -> None:
    """An error's URL keeps an IPv6 host's brackets, drops user info and query, never raises."""
    assert annopull.TransferError("x", url=url).url == shown
