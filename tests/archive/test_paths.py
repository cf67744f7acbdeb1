"""Entry paths: what may enter the archive, and what is refused with which reason."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archive.errors import InvalidPath, PathCollision
from archive.paths import case_collisions, normalize_path, normalize_paths


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a//b", "empty"),
        ("a/./b", "'.'"),
        ("a/", "empty"),
        ("C:/Windows/x", "drive"),
        ("c:x", "drive"),
        ("a\\b", "backslash"),
        ("..\\..\\x", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("bell\x07", "control"),
        ("del\x7f", "control"),
        ("x" * 256, "255 bytes"),
        ("é" * 128, "255 bytes"),
        ("a/" * 1100 + "b", "2048"),
        ("bad\udcffname", "UTF-8"),
    ],
)
def test_refused_paths_say_why(raw: str, reason: str) -> None:
    with pytest.raises(InvalidPath) as info:
        normalize_path(raw)
    assert reason in info.value.reason
    assert info.value.path == raw


@pytest.mark.parametrize(
    "raw",
    [
        "a.txt",
        "data/run 1/x.csv",
        "ünïcödé/日本語.txt",
        "x" * 255,
        ".hidden",
        "a/b/c/d",
        "..a",
        "a..",
    ],
)
def test_valid_paths_are_kept(raw: str) -> None:
    assert normalize_path(raw) == unicodedata.normalize("NFC", raw)


def test_nfd_becomes_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "café/résumé.txt")
    assert nfd != "café/résumé.txt"
    assert normalize_path(nfd) == "café/résumé.txt"


def test_nfc_nfd_twins_collide() -> None:
    nfc = "café.txt"
    nfd = unicodedata.normalize("NFD", nfc)
    with pytest.raises(PathCollision) as info:
        normalize_paths([nfc, nfd])
    assert info.value.paths == [nfc, nfd]


def test_case_collisions_are_reported_not_refused() -> None:
    paths = normalize_paths(["README.md", "readme.md", "other"])
    assert case_collisions(paths) == [["README.md", "readme.md"]]


segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\"),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", "..") and not (len(s) >= 2 and s[1] == ":"))


@given(st.lists(segment, min_size=1, max_size=6))
def test_normalized_paths_are_safe_and_stable(parts: list[str]) -> None:
    raw = "/".join(parts)
    try:
        path = normalize_path(raw)
    except InvalidPath as exc:
        # Only length limits or NFC-produced drive-like forms may refuse generated names.
        assert "bytes" in exc.reason or "drive" in exc.reason or "'..'" in exc.reason
        return
    assert path == unicodedata.normalize("NFC", path)
    assert normalize_path(path) == path  # idempotent
    assert not path.startswith("/")
    assert all(seg not in ("", ".", "..") for seg in path.split("/"))


@given(st.text(max_size=40))
def test_any_string_is_either_refused_or_safe(raw: str) -> None:
    try:
        path = normalize_path(raw)
    except InvalidPath:
        return
    assert "\x00" not in path and "\\" not in path
    assert ".." not in path.split("/")
    assert not path.startswith("/")


def test_every_control_and_surrogate_code_point_is_refused_and_no_other() -> None:
    """The one-search check refuses exactly Unicode's Cc and Cs code points."""
    refused = set()
    for code in range(0x110000):
        try:
            normalize_path(f"a{chr(code)}b")
        except InvalidPath as exc:
            if "control character" in exc.reason or "UTF-8" in exc.reason:
                refused.add(code)
    expected = {c for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cs")}
    assert refused - {0} == expected - {0}  # NUL has its own message
