"""The file-system Source: which directories are versions (TF Serving's rule), duplicates, and what it emits."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tfsctl.core import source as source_mod
from tfsctl.core.source import FileSystemSource, VersionPolicy, list_versions


class Target:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[int, Path]]] = []

    def set_aspired_versions(self, name: str, versions: dict[int, Path]) -> None:
        self.calls.append((name, dict(versions)))


@pytest.fixture(autouse=True)
def fresh_warnings():
    source_mod._warned_duplicates.clear()
    yield
    source_mod._warned_duplicates.clear()


def test_names_beyond_int64_are_not_versions(tmp_path: Path) -> None:
    for name in ("1", "9223372036854775807", "9223372036854775808", "99999999999999999999", "1e3", "0x10"):
        (tmp_path / name).mkdir()
    assert sorted(list_versions(tmp_path)) == [1, 9223372036854775807]


def test_duplicate_version_names_later_sorted_child_wins_and_is_warned_once(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tfsctl.core.source")
    for name in ("123", "00000123", "0123"):
        (tmp_path / name).mkdir()
    # Sorted names: "00000123" < "0123" < "123"; as TF Serving's IndexChildrenByVersion, the later child wins.
    for _ in range(3):
        assert list_versions(tmp_path) == {123: tmp_path / "123"}
    warnings = [r.getMessage() for r in caplog.records if "duplicate version directories" in r.getMessage()]
    assert len(warnings) == 2, warnings  # one per ignored name, not one per poll
    assert "version 123 will be loaded from 0123; 00000123 is ignored" in warnings[0]
    assert "version 123 will be loaded from 123; 0123 is ignored" in warnings[1]
    shutil.rmtree(tmp_path / "123")
    assert list_versions(tmp_path) == {123: tmp_path / "0123"}


def test_emptied_base_path_emits_the_empty_set_by_default_and_nothing_when_asked(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    keep = Target()
    src = FileSystemSource(keep, poll_wait_seconds=0, servable_versions_always_present=True)
    src.set_models({"m": (tmp_path, VersionPolicy())}, poll=False)
    src.poll_once()
    (tmp_path / "1").rmdir()
    src.poll_once()
    assert keep.calls == [("m", {1: tmp_path / "1"})]  # servable_versions_always_present: nothing unloads

    tf_default = Target()
    src = FileSystemSource(tf_default, poll_wait_seconds=0)
    src.set_models({"m": (tmp_path, VersionPolicy())}, poll=False)
    src.poll_once()
    assert tf_default.calls == [("m", {})]  # tensorflow_model_server's default: unload every version


def test_missing_base_path_emits_nothing(tmp_path: Path) -> None:
    target = Target()
    src = FileSystemSource(target, poll_wait_seconds=0, servable_versions_always_present=False)
    src.set_models({"m": (tmp_path / "absent", VersionPolicy())}, poll=False)
    src.poll_once()
    assert target.calls == []  # a file-system error is not "no versions" (TF Serving emits nothing either)


def test_specific_policy_emits_only_what_exists(tmp_path: Path) -> None:
    for v in (1, 2):
        (tmp_path / str(v)).mkdir()
    target = Target()
    src = FileSystemSource(target, poll_wait_seconds=0)
    src.set_models({"m": (tmp_path, VersionPolicy("specific", versions=frozenset({2, 3})))}, poll=True)
    assert target.calls == [("m", {2: tmp_path / "2"})]
