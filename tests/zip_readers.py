"""Run independent zip readers over an archive and report what each one saw.

Each reader returns a :data:`Manifest` (entry name -> (size, CRC-32) of the bytes it read) or
raises ``AssertionError`` with the reader's output. A reader whose tool is not installed skips
its test locally and fails it when ``CI=true``, so CI can never pass by missing a reader.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

Manifest = dict[str, tuple[int, int]]
Reader = Callable[[Path, Path], Manifest]

JAVA_DIR = Path(__file__).parent / "java"
# UTF-8 names are only shown and extracted faithfully under a UTF-8 locale.
_ENV = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
_CHUNK = 1 << 20


def require(*tools: str) -> str:
    """Return the first of ``tools`` on PATH; skip (or fail under ``CI=true``) if none is."""
    for tool in tools:
        found = shutil.which(tool)
        if found:
            return found
    message = f"zip reader not installed: {' or '.join(tools)}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run(command: str | list[str], *, timeout: float = 1800) -> str:
    """Run a reader; fail with its output on a non-zero exit. Strings run under bash."""
    argv = ["bash", "-o", "pipefail", "-c", command] if isinstance(command, str) else command
    done = subprocess.run(argv, capture_output=True, env=_ENV, timeout=timeout, check=False)
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{output[-4000:]}"
    return done.stdout.decode()


def file_crc(path: Path) -> tuple[int, int]:
    """Size and CRC-32 of a file, read in chunks."""
    crc = size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def tree_manifest(root: Path) -> Manifest:
    """The manifest of every regular file under ``root``, names relative with ``/``."""
    return {
        p.relative_to(root).as_posix(): file_crc(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _parse_lines(text: str) -> Manifest:
    manifest: Manifest = {}
    for line in text.splitlines():
        name, size, crc = line.rsplit("\t", 2)
        manifest[name] = (int(size), int(crc, 16))
    return manifest


def python_zipfile(path: Path, scratch: Path) -> Manifest:
    """``python -m zipfile -t``, then stdlib ``zipfile`` reads every entry."""
    _run(["python", "-m", "zipfile", "-t", str(path)])
    manifest: Manifest = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            crc = size = 0
            with archive.open(info) as member:
                while chunk := member.read(_CHUNK):
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
            manifest[info.filename] = (size, crc)
    return manifest


def unzip_test(path: Path, scratch: Path) -> Manifest:
    """``unzip -t`` must report no errors; then ``unzip`` extracts and the files are compared."""
    unzip = require("unzip")
    output = _run([unzip, "-t", str(path)])
    assert "No errors detected" in output, output[-2000:]
    return unzip_extract(path, scratch)


def unzip_extract(path: Path, scratch: Path) -> Manifest:
    """``unzip`` extracts everything; the extracted files are the manifest."""
    unzip = require("unzip")
    dest = scratch / "unzip"
    _run([unzip, "-q", "-o", str(path), "-d", str(dest)])
    try:
        return tree_manifest(dest)
    finally:
        shutil.rmtree(dest)


def zipinfo_listing(path: Path, scratch: Path) -> Manifest:
    """``zipinfo`` lists every entry without warnings; sizes from ``zipinfo -l``-style lines.

    zipinfo does not decompress, so CRCs are taken from stdlib's central-directory view.
    """
    zipinfo = require("zipinfo")
    verbose = _run([zipinfo, "-v", str(path)])
    with zipfile.ZipFile(path) as archive:
        directory = {i.filename: (i.file_size, i.CRC) for i in archive.infolist()}
        descriptors = any(i.flag_bits & 0x08 for i in archive.infolist())
    markers = ["warning", "error"]
    # zipinfo's gap check ignores data descriptors, so it only means something without them:
    # there it proves every local header is exactly where the central directory says.
    if not descriptors:
        markers.append("preceding this file")
    for marker in markers:
        assert marker not in verbose.lower(), _context(verbose, marker)
    names = _run([zipinfo, "-1", str(path)]).splitlines()
    assert sorted(names) == sorted(directory)
    return directory


def sevenzip(path: Path, scratch: Path) -> Manifest:
    """``7z t`` with no warnings or header errors (it exits 0 on those, so grep)."""
    seven = require("7z", "7zz")
    output = _run([seven, "t", str(path)])
    for marker in ("WARNINGS", "Headers Error", "ERROR", "Unexpected end"):
        assert marker not in output, output[-3000:]
    assert "Everything is Ok" in output, output[-3000:]
    listing = _run([seven, "l", "-slt", str(path)])
    manifest: Manifest = {}
    record: dict[str, str] = {}
    # -slt prints one "Field = value" block per entry, blocks separated by blank lines; the
    # archive's own block has no CRC field.
    for line in [*listing.splitlines(), ""]:
        field, sep, value = line.partition(" = ")
        if sep:
            record[field] = value
            continue
        if "CRC" in record and "Path" in record:
            manifest[record["Path"]] = (int(record["Size"]), int(record["CRC"] or "0", 16))
        record = {}
    return manifest


def bsdtar_pipe(path: Path, scratch: Path) -> Manifest:
    """libarchive reading from a pipe (``cat f | bsdtar``): list, then extract and compare."""
    bsdtar = require("bsdtar")
    source = shlex.quote(str(path))
    listing = _run(f"cat {source} | {shlex.quote(bsdtar)} -tf -").splitlines()
    dest = scratch / "bsdtar"
    dest.mkdir()
    try:
        _run(f"cat {source} | {shlex.quote(bsdtar)} -xf - -C {shlex.quote(str(dest))}")
        manifest = tree_manifest(dest)
    finally:
        shutil.rmtree(dest)
    assert sorted(listing) == sorted(manifest)
    return manifest


def java_zipfile(path: Path, scratch: Path) -> Manifest:
    """Java ``ZipFile`` (central directory) reads every entry and checks its CRC."""
    java = require("java")
    return _parse_lines(_run([java, str(JAVA_DIR / "ZipFileCheck.java"), str(path)]))


def java_zipinputstream(path: Path, scratch: Path) -> Manifest:
    """Java ``ZipInputStream`` reads the archive from a pipe, local headers only."""
    java = require("java")
    program = shlex.quote(str(JAVA_DIR / "ZipInputStreamCheck.java"))
    return _parse_lines(_run(f"cat {shlex.quote(str(path))} | {shlex.quote(java)} {program}"))


READERS: Mapping[str, Reader] = {
    "python-zipfile": python_zipfile,
    "unzip": unzip_test,
    "zipinfo": zipinfo_listing,
    "7z": sevenzip,
    "bsdtar-pipe": bsdtar_pipe,
    "java-zipfile": java_zipfile,
    "java-zipinputstream": java_zipinputstream,
}


def _context(text: str, marker: str) -> str:
    at = text.lower().find(marker)
    return text[max(0, at - 600) : at + 200]
