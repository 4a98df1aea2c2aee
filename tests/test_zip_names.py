"""Entry-name rules of annopull._zip.names: sanitising, judging foreign names, dedupe candidates."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import pytest

from annopull._errors import ZipFormatError
from annopull._zip.names import (
    MAX_NAME_BYTES,
    name_candidates,
    sanitize_entry_name,
    unsafe_name_reason,
)

SANITIZED = [
    pytest.param("a.json", "a.json", id="plain"),
    pytest.param("dir\\sub\\a.json", "dir/sub/a.json", id="backslashes"),
    pytest.param("C:\\Windows\\a.json", "Windows/a.json", id="drive"),
    pytest.param("/etc/passwd", "etc/passwd", id="absolute"),
    pytest.param("../../a/./b/../c.json", "a/b/c.json", id="dot-segments"),
    pytest.param("a//b/", "a/b", id="empty-segments"),
    pytest.param("scènes/ü.json", "scènes/ü.json", id="utf8"),
]


def unique_names(names: Iterable[str]) -> list[str]:
    """The pipeline's rule: sanitise, then take the first candidate not yet used."""
    taken: set[str] = set()
    chosen = []
    for name in names:
        pick = next(c for c in name_candidates(sanitize_entry_name(name)) if c not in taken)
        taken.add(pick)
        chosen.append(pick)
    return chosen


@pytest.mark.parametrize(("raw", "expected"), SANITIZED)
def test_sanitize_entry_name(raw: str, expected: str) -> None:
    """Names lose every part that could escape the extraction folder, and nothing else."""
    assert sanitize_entry_name(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), SANITIZED)
def test_sanitized_names_are_never_judged_unsafe(raw: str, expected: str) -> None:
    """Whatever sanitize_entry_name produces, extraction's unsafe_name_reason accepts."""
    assert unsafe_name_reason(sanitize_entry_name(raw)) is None


@pytest.mark.parametrize("raw", ["", "/", "..", "./..", "C:", "a\x00b"])
def test_sanitize_rejects_unusable_names(raw: str) -> None:
    """Names that are empty after sanitising, or hold a NUL, raise ZipFormatError."""
    with pytest.raises(ZipFormatError):
        sanitize_entry_name(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("\x00", "NUL", id="only-nul"),
        pytest.param("ok/a\x00b.json", "NUL", id="nul-inside"),
        pytest.param("../", "empty after sanitising", id="only-parent"),
        pytest.param("\\.\\", "empty after sanitising", id="only-dots"),
    ],
)
def test_sanitize_error_says_why_and_names_the_input(raw: str, message: str) -> None:
    """The refusal gives its reason and carries the name as given (repr) in ``item``."""
    with pytest.raises(ZipFormatError, match=message) as caught:
        sanitize_entry_name(raw)
    assert caught.value.item == repr(raw)


def test_name_length_limit_counts_utf8_bytes() -> None:
    """65,535 bytes is accepted, one more is refused, and multi-byte characters count as bytes."""
    longest = "a/" + "b" * (MAX_NAME_BYTES - 2)
    assert sanitize_entry_name(longest) == longest
    with pytest.raises(ZipFormatError, match="longer than 65535 bytes"):
        sanitize_entry_name(longest + "c")
    # 32,768 two-byte characters: under the limit in characters, over it in bytes.
    wide = "é" * (MAX_NAME_BYTES // 2 + 1)
    assert len(wide) < MAX_NAME_BYTES
    with pytest.raises(ZipFormatError, match="longer than 65535 bytes") as caught:
        sanitize_entry_name(wide)
    assert caught.value.item is not None
    assert len(caught.value.item) < 100  # the message quotes only the start of the name


def test_name_length_is_measured_after_sanitising() -> None:
    """Dropped parts (a drive, ``..`` segments) do not count against the limit."""
    body = "x" * MAX_NAME_BYTES
    assert sanitize_entry_name("C:\\..\\" + body) == body


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param("a\x00b", "NUL in name", id="nul"),
        pytest.param("a\\..\\evil", "backslash in name", id="backslash"),
        pytest.param("/etc/passwd", "absolute path", id="absolute"),
        pytest.param("C:/evil.txt", "drive letter", id="drive"),
        pytest.param("ok/../../evil.txt", "'..' segment", id="parent"),
        pytest.param("..", "'..' segment", id="bare-parent"),
        pytest.param("", "empty name", id="empty"),
    ],
)
def test_unsafe_name_reason_names_the_danger(name: str, reason: str) -> None:
    """Each way a foreign name could escape the extraction folder is named as such."""
    assert unsafe_name_reason(name) == reason


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a.json", id="plain"),
        pytest.param("dir/", id="folder"),
        pytest.param("scènes/ü.json", id="utf8"),
        pytest.param("a..b/c...json", id="dots-in-names"),
        pytest.param("./a.json", id="dot-segment"),
    ],
)
def test_safe_names_have_no_reason(name: str) -> None:
    """Ordinary names, folders and dots inside a segment are not refused."""
    assert unsafe_name_reason(name) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("a.json", ["a.json", "a (2).json", "a (3).json", "a (4).json"], id="ext"),
        pytest.param("b", ["b", "b (2)", "b (3)", "b (4)"], id="no-ext"),
        pytest.param(
            "dir.v1/x.tar.gz",
            [
                "dir.v1/x.tar.gz",
                "dir.v1/x.tar (2).gz",
                "dir.v1/x.tar (3).gz",
                "dir.v1/x.tar (4).gz",
            ],
            id="dotted-folder-double-ext",
        ),
        pytest.param(".hidden", [".hidden", ".hidden (2)", ".hidden (3)", ".hidden (4)"], id="dot"),
    ],
)
def test_name_candidates_count_up_before_the_extension(name: str, expected: list[str]) -> None:
    """The name itself comes first, then ' (2)', ' (3)', … before the last extension only."""
    assert list(islice(name_candidates(name), 4)) == expected


def test_dedupe_with_candidates_matches_the_old_writer() -> None:
    """Sanitise, then first free candidate: duplicates get ' (n)' names as the writer once gave."""
    names = ["a.json", "./a.json", "a.json", "b", "/b"]
    assert unique_names(names) == ["a.json", "a (2).json", "a (3).json", "b", "b (2)"]


def test_candidates_skip_names_that_are_already_taken_literally() -> None:
    """A name that already looks like a candidate ('a (2).json') pushes the next one to (3)."""
    assert unique_names(["a (2).json", "a.json", "a.json"]) == [
        "a (2).json",
        "a.json",
        "a (3).json",
    ]


def test_a_lone_surrogate_is_refused_not_a_crash() -> None:
    """A name with a lone surrogate has no UTF-8 form: a ZipFormatError, not UnicodeEncodeError."""
    with pytest.raises(ZipFormatError, match="not valid Unicode"):
        sanitize_entry_name("a\udc80.json")
