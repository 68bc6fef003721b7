"""ServerCore (Source + Manager) over real toy SavedModels on disk: policies, labels, hot swap, faults, handles,
config changes."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfsctl.core.config import single_model_config
from tfsctl.core.events import LOADING, START, ServableStateEvent
from tfsctl.core.loader import Loader, LoadError
from tfsctl.core.manager import AVAILABLE, END, UNLOADING
from tfsctl.core.server_core import ServerCore, ServerCoreOptions
from tfsctl.core.source import FileSystemSource, VersionPolicy, list_versions
from tfsctl.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, Unknown
from tfsctl.serving.metrics import Metrics
from tfsctl.testing import wait_until, write_toy_model

X = np.ones((1, 4), np.float32)
POLL = 0.05




def poll(m: ServerCore, times: int = 3) -> None:
    """Synchronous Source polls: what the Manager decides on them (load, unload, nothing) is decided on return."""
    for _ in range(times):
        m.source.poll_once()


def recorded(m: ServerCore) -> list[ServableStateEvent]:
    """Every state event the manager publishes from now on."""
    seen: list[ServableStateEvent] = []
    m.events.subscribe(seen.append)
    return seen


def states(m: ServerCore, name: str) -> dict[int, int]:
    return {s.version: s.state for s in m.version_states(name)}


def served(m: ServerCore, name: str = "toy", **kw) -> tuple[int, float]:
    """(version, scale) of what a request gets now."""
    with m.handle(name, **kw) as s:
        return s.version, float(s.run("", {"x": X})["y"][0, 0])


def config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


@pytest.fixture
def make_manager() -> Iterator[Callable[..., ServerCore]]:
    """A started ServerCore serving ``cfg``; ``kw`` are ServerCoreOptions (``metrics``: subscribed to its events)."""
    made: list[ServerCore] = []

    def make(cfg: model_server_config_pb2.ModelServerConfig, **kw) -> ServerCore:
        kw.setdefault("file_system_poll_wait_seconds", POLL)
        kw.setdefault("load_retry_interval_seconds", 0.02)
        if "metrics" in kw:
            kw["state_subscribers"] = (kw.pop("metrics").on_servable_state,)
        m = ServerCore(ServerCoreOptions(**kw))
        m.apply_config(cfg)
        m.start()
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop(timeout=10)


# --- Source / VersionPolicy ---


def test_list_versions_ignores_non_numeric(tmp_path: Path) -> None:
    for name in ("1", "12", ".tmp-3-abc", "latest", "-4", "٣"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert sorted(list_versions(tmp_path)) == [1, 12]
    assert list_versions(tmp_path / "absent") == {}


def test_version_policy_select() -> None:
    from tensorflow_serving.config import file_system_storage_path_source_pb2 as fs

    disk = {v: Path(str(v)) for v in (1, 2, 5, 9)}
    P = fs.FileSystemStoragePathSourceConfig.ServableVersionPolicy
    assert sorted(VersionPolicy.from_proto(P()).select(disk)) == [9]
    assert sorted(VersionPolicy.from_proto(text_format.Parse("latest {}", P())).select(disk)) == [9]
    assert sorted(VersionPolicy.from_proto(text_format.Parse("latest { num_versions: 2 }", P())).select(disk)) == [
        5, 9,
    ]
    assert sorted(VersionPolicy.from_proto(text_format.Parse("all {}", P())).select(disk)) == [1, 2, 5, 9]
    spec = VersionPolicy.from_proto(text_format.Parse("specific { versions: 2 versions: 3 }", P()))
    assert sorted(spec.select(disk)) == [2]


def test_source_emits_each_poll(tmp_path: Path) -> None:
    seen: list[dict[int, Path]] = []

    class Target:
        def set_aspired_versions(self, name: str, versions: dict[int, Path]) -> None:
            seen.append(versions)

    (tmp_path / "1").mkdir()
    src = FileSystemSource(Target(), poll_wait_seconds=0)
    src.set_models({"m": (tmp_path, VersionPolicy())}, poll=False)
    src.start()  # poll_wait 0: one poll at start, no thread
    assert [sorted(s) for s in seen] == [[1]]
    assert not [t for t in threading.enumerate() if t.name == "tfsctl-fs-source"]  # nothing polls again
    src.poll_once()  # an explicit poll (a config change) still sees the disk
    src.stop()
    assert [sorted(s) for s in seen] == [[1], [1]]

    never = FileSystemSource(Target(), poll_wait_seconds=-1)  # as TF Serving: negative disables polling
    never.set_models({"m": (tmp_path, VersionPolicy())})
    never.start()
    never.stop()
    assert len(seen) == 2


def test_missing_base_path_is_reported_once_until_it_appears(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tfsctl.core.source")

    class Target:
        def set_aspired_versions(self, name: str, versions: dict[int, Path]) -> None:
            pass

    base = tmp_path / "typo"
    src = FileSystemSource(Target(), poll_wait_seconds=0)
    src.set_models({"m": (base, VersionPolicy())}, poll=False)
    for _ in range(3):
        src.poll_once()
    missing = [r.getMessage() for r in caplog.records if "does not exist" in r.getMessage()]
    assert missing == [f"model m: base path {base} does not exist; waiting for it to appear"]
    (base / "1").mkdir(parents=True)
    src.poll_once()
    shutil.rmtree(base)
    src.poll_once()  # gone again after it existed: reported again
    assert len([r for r in caplog.records if "does not exist" in r.getMessage()]) == 2


# --- serving, hot swap, removal ---


def test_new_version_is_served_without_restart(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    m = make_manager(single_model_config("toy", base))
    assert m.wait_until_ready(15)
    assert served(m) == (1, 1.0)
    write_toy_model(base, 2, scale=2.0)
    assert m.manager.wait_for_state("toy", 2, {AVAILABLE}, 15), "version 2 AVAILABLE"
    assert served(m) == (2, 2.0)
    assert m.manager.wait_for_state("toy", 1, {END}, 15), "version 1 unloaded (latest 1)"
    with pytest.raises(NotFound, match=r"Specific\(toy, 1\)"):
        served(m, version=1)


def test_removed_version_is_unloaded(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    write_toy_model(base, 2, scale=2.0)
    m = make_manager(config(f"model_config_list {{ config {{ name: 'toy' base_path: '{base}' "
                            "model_version_policy { all {} } } }"))
    wait_until(lambda: states(m, "toy") == {1: AVAILABLE, 2: AVAILABLE}, 15, "both versions")
    assert served(m, version=1) == (1, 1.0)
    shutil.rmtree(base / "2")
    assert m.manager.wait_for_state("toy", 2, {END}, 15), "version 2 unloaded"
    assert served(m) == (1, 1.0)


def test_version_policies_and_labels(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    for v in (1, 2, 3):
        write_toy_model(base, v, scale=float(v))
    text = f"""model_config_list {{
      config {{ name: 'toy' base_path: '{base}' model_version_policy {{ specific {{ versions: 1 versions: 3 }} }}
               version_labels {{ key: 'stable' value: 1 }} version_labels {{ key: 'canary' value: 3 }} }}
      config {{ name: 'two' base_path: '{base}' model_version_policy {{ latest {{ num_versions: 2 }} }} }}
    }}"""
    m = make_manager(config(text), allow_version_labels_for_unavailable_models=True)  # labels at start-up
    assert m.wait_until_ready(15)
    wait_until(lambda: states(m, "toy") == {1: AVAILABLE, 3: AVAILABLE}, 15, "specific versions")
    wait_until(lambda: states(m, "two") == {2: AVAILABLE, 3: AVAILABLE}, 15, "latest 2")
    assert m.labels("toy") == {"stable": 1, "canary": 3}
    assert served(m, label="stable") == (1, 1.0)
    assert served(m, label="canary") == (3, 3.0)
    assert served(m) == (3, 3.0)
    assert served(m, "two", version=2) == (2, 2.0)
    with pytest.raises(InvalidArgument, match=r"Unrecognized servable version label: beta \(model 'toy' has labels: "
                       r"canary, stable\)"):
        served(m, label="beta")
    with pytest.raises(NotFound, match=r"Specific\(toy, 2\)"):
        served(m, version=2)
    with pytest.raises(NotFound, match="no model named 'nope'"):
        served(m, "nope")
    with pytest.raises(NotFound, match="no model named 'nope'"):  # the model is looked up before the label
        served(m, "nope", label="stable")
    with pytest.raises(NotFound, match="no model named 'nope'"):
        m.labels("nope")
    with pytest.raises(InvalidArgument, match="not both"):
        served(m, version=1, label="stable")

    # Moving an existing label to a version that is not AVAILABLE is refused and changes nothing.
    moved = text.replace("key: 'canary' value: 3", "key: 'canary' value: 2")
    with pytest.raises(FailedPrecondition, match="Request to assign label to version 2 of model toy, which is not "
                       "currently available for inference"):
        m.apply_config(config(moved))
    assert m.labels("toy") == {"stable": 1, "canary": 3}
    # Moving it to an AVAILABLE version works; a new label may point at a version not loaded yet.
    ok = text.replace("key: 'canary' value: 3", "key: 'canary' value: 1").replace(
        "version_labels { key: 'stable' value: 1 }",
        "version_labels { key: 'stable' value: 1 } version_labels { key: 'next' value: 7 }",
    )
    m.apply_config(config(ok))
    assert m.labels("toy") == {"stable": 1, "canary": 1, "next": 7}
    assert served(m, label="canary") == (1, 1.0)
    with pytest.raises(NotFound, match="label 'next' points to version 7"):
        served(m, label="next")


def test_labels_may_point_to_unloaded_versions_at_startup(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1)
    m = make_manager(config(f"model_config_list {{ config {{ name: 'toy' base_path: '{base}' "
                            "version_labels { key: 'canary' value: 2 } } }"),
                     allow_version_labels_for_unavailable_models=True)
    assert m.wait_until_ready(15)
    with pytest.raises(NotFound):
        served(m, label="canary")
    write_toy_model(base, 2, scale=2.0)
    assert m.manager.wait_for_state("toy", 2, {AVAILABLE}, 15), "version 2"
    assert served(m, label="canary") == (2, 2.0)


# --- faults ---


def test_corrupt_version_never_available(make_manager, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tfsctl.core.manager")
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    m = make_manager(single_model_config("toy", base), max_num_load_retries=2)
    assert m.wait_until_ready(15)
    bad = base / "2"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"\x08garbage\xff\xff")
    assert m.manager.wait_for_state("toy", 2, {END}, 15), "corrupt version ends"
    (v2,) = [s for s in m.version_states("toy") if s.version == 2]
    assert "cannot parse the SavedModel proto" in v2.error and "version 2" in v2.error
    assert served(m) == (1, 1.0)
    assert states(m, "toy")[1] == AVAILABLE
    failures = lambda: sum("load of model toy version 2 failed" in r.getMessage() for r in caplog.records)  # noqa: E731
    assert failures() == 3  # first try + max_num_load_retries
    events = recorded(m)
    poll(m)  # more polls: an unchanged failed version is not retried (a retry starts with a START event)
    assert not [e for e in events if e.version == 2 and e.state == START]
    assert failures() == 3

    # Missing variables: never AVAILABLE either, and version 1 still serves.
    write_toy_model(base, 3, scale=3.0)
    shutil.rmtree(base / "3" / "variables")
    assert m.manager.wait_for_state("toy", 3, {END}, 15), "version without variables ends"
    assert "TensorFlow could not load it" in [s for s in m.version_states("toy") if s.version == 3][0].error
    assert served(m) == (1, 1.0)

    # A good newer version replaces version 1.
    write_toy_model(base, 4, scale=4.0)
    assert m.manager.wait_for_state("toy", 4, {AVAILABLE}, 15), "good version 4"
    assert served(m) == (4, 4.0)
    assert m.manager.wait_for_state("toy", 1, {END}, 15), "version 1 unloaded after 4 is AVAILABLE"


@pytest.mark.parametrize("retry_on_change", [False, True])
def test_half_copied_version_loads_once_complete_only_when_asked(make_manager, tmp_path: Path,
                                                                 retry_on_change: bool) -> None:
    """TF Serving never retries a version that failed every retry while it stays aspired; tfsctl's opt-in
    retry_failed_versions_on_change loads it again once its directory changes (the copy completed)."""
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    staged = write_toy_model(tmp_path / "staging", 2, scale=2.0)
    m = make_manager(single_model_config("toy", base), max_num_load_retries=1,
                     retry_failed_versions_on_change=retry_on_change)
    assert m.wait_until_ready(15)
    target = base / "2"
    target.mkdir()  # a copy in progress: the directory exists, saved_model.pb not yet
    assert m.manager.wait_for_state("toy", 2, {END}, 15), "half-copied version fails"
    assert "no saved_model.pb" in [s for s in m.version_states("toy") if s.version == 2][0].error
    assert served(m) == (1, 1.0)
    for item in staged.iterdir():  # the copy goes on; saved_model.pb arrives last, whole (rename)
        if item.name != "saved_model.pb":
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, target / item.name)
    shutil.copy2(staged / "saved_model.pb", target / "saved_model.pb.part")
    (target / "saved_model.pb.part").rename(target / "saved_model.pb")  # the directory changed: tried again
    if not retry_on_change:
        poll(m, 3)  # the completed copy is seen by these polls, and left alone
        assert states(m, "toy").get(2) == END and served(m) == (1, 1.0)
        return
    assert m.manager.wait_for_state("toy", 2, {AVAILABLE}, 15), "completed version 2"
    assert served(m) == (2, 2.0)


@pytest.mark.parametrize("how", ["emptied", "removed"])
def test_base_path_gone_keeps_last_version(make_manager, tmp_path: Path, how: str) -> None:
    """A vanished base path is a file-system error: nothing is emitted (TF Serving too). An emptied one keeps the
    last version only with servable_versions_always_present (the default unloads it: see the test further on)."""
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    m = make_manager(single_model_config("toy", base), servable_versions_always_present=how == "emptied")
    assert m.wait_until_ready(15)
    if how == "emptied":
        shutil.rmtree(base / "1")
    else:
        shutil.rmtree(base)
    poll(m)  # an unload would be decided (UNLOADING) within these polls
    assert states(m, "toy") == {1: AVAILABLE}
    assert served(m) == (1, 1.0)  # the loaded graph keeps serving from memory
    assert m.is_ready()
    write_toy_model(base, 2, scale=2.0)
    assert m.manager.wait_for_state("toy", 2, {AVAILABLE}, 15), "new version after the base path came back"
    assert m.manager.wait_for_state("toy", 1, {END}, 15), "old version unloaded"


def test_in_flight_handle_delays_unload(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    m = make_manager(single_model_config("toy", base))
    assert m.wait_until_ready(15)
    with m.handle("toy") as old:
        write_toy_model(base, 2, scale=2.0)
        assert m.manager.wait_for_state("toy", 2, {AVAILABLE}, 15), "version 2"
        assert m.manager.wait_for_state("toy", 1, {UNLOADING}, 15), "version 1 unloading"
        poll(m)
        assert states(m, "toy")[1] == UNLOADING  # held: not unloaded under the request (it waits for the release)
        assert float(old.run("", {"x": X})["y"][0, 0]) == 1.0  # the request finishes on its version
        assert served(m) == (2, 2.0)  # new requests go to the new version
    assert m.manager.wait_for_state("toy", 1, {END}, 15), "version 1 unloaded once released"


def test_not_found_until_a_version_loads(make_manager, tmp_path: Path) -> None:
    """As TF Serving's handle lookup: NOT_FOUND 'Servable not found for request: Latest(toy)' until one loads."""
    base = tmp_path / "toy"
    base.mkdir()
    m = make_manager(single_model_config("toy", base))
    poll(m)
    assert not m.wait_until_ready(0) and m.version_states("toy") == []
    with pytest.raises(NotFound, match=r"Servable not found for request: Latest\(toy\) \(no version is AVAILABLE"):
        served(m)
    write_toy_model(base, 5)
    assert m.wait_until_ready(15)
    assert served(m)[0] == 5


def test_only_corrupt_versions_report_errors(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"junk")
    m = make_manager(single_model_config("toy", base), max_num_load_retries=0)
    assert m.manager.wait_for_state("toy", 1, {END}, 15), "failed load"
    assert not m.is_ready()
    with pytest.raises(NotFound, match="load errors: version 1: .*cannot parse"):
        served(m)


# --- config changes, metrics, stop ---


def test_apply_config_adds_and_removes_models(make_manager, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_toy_model(a, 1, scale=1.0)
    write_toy_model(b, 1, scale=5.0)
    metrics = Metrics()
    m = make_manager(single_model_config("a", a), metrics=metrics)
    assert m.wait_until_ready(15)
    both = config(f"model_config_list {{ config {{ name: 'a' base_path: '{a}' }} "
                  f"config {{ name: 'b' base_path: '{b}' }} }}")
    m.apply_config(both)
    assert m.model_names() == ["a", "b"]
    assert m.wait_until_ready(15)
    assert served(m, "b") == (1, 5.0)
    with m.handle("b") as held:
        m.apply_config(config(f"model_config_list {{ config {{ name: 'a' base_path: '{a}' }} }}"))
        assert m.model_names() == ["a"]
        with pytest.raises(NotFound, match="no model named 'b'"):
            served(m, "b")
        assert float(held.run("", {"x": X})["y"][0, 0]) == 5.0  # in-flight request on the removed model finishes

    def events(name: str, event: str) -> float:
        v = metrics.registry.get_sample_value("tfsctl_model_events_total", {"model_name": name, "event": event})
        return v or 0.0

    wait_until(lambda: events("b", "unload") == 1.0, 15, "model b unloaded")
    assert events("a", "load") == 1.0 and events("b", "load") == 1.0
    assert served(m, "a") == (1, 1.0)
    seen = recorded(m)
    m.apply_config(m.config())  # same config again: nothing reloads
    poll(m)
    assert events("a", "load") == 1.0 and seen == []


def test_apply_config_rejects_bad_config(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1)
    m = make_manager(single_model_config("toy", base))
    dup = config(f"model_config_list {{ config {{ name: 'x' base_path: '{base}' }} "
                 f"config {{ name: 'x' base_path: '{base}' }} }}")
    with pytest.raises(InvalidArgument, match="appears more than once"):
        m.apply_config(dup)
    assert m.model_names() == ["toy"]


def test_stop_unloads_and_refuses(tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1)
    m = ServerCore(ServerCoreOptions(file_system_poll_wait_seconds=POLL))
    m.apply_config(single_model_config("toy", base))
    m.start()
    assert m.wait_until_ready(15)
    m.stop(timeout=10)
    assert states(m, "toy") == {1: END}
    with pytest.raises(Unavailable, match="shutting down"):
        served(m)
    with pytest.raises(Unavailable, match="shutting down"):  # before the label is looked at, as the Manager
        served(m, label="nope")


def test_concurrent_requests_during_swaps(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    m = make_manager(single_model_config("toy", base))
    assert m.wait_until_ready(15)
    errors: list[BaseException] = []
    seen: set[int] = set()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                v, y = served(m)
                assert y == float(v)  # version v was exported with scale v
                seen.add(v)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for v in (2, 3):
            write_toy_model(base, v, scale=float(v))
            assert m.manager.wait_for_state("toy", v, {AVAILABLE}, 15), f"version {v}"
        shutil.rmtree(base / "1", ignore_errors=True)
        wait_until(lambda: 3 in seen, 15, "clients reach version 3")
    finally:  # the clients send until told to stop, whatever happened
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[:3]
    assert served(m) == (3, 3.0)


# --- version directories, events, retries, unload threads (issue 11, issue 12) ---


def test_directory_beyond_int64_is_ignored_and_does_not_unload(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    m = make_manager(single_model_config("toy", base))
    assert m.wait_until_ready(15)
    write_toy_model(tmp_path / "stage", 2, scale=2.0).rename(base / "99999999999999999999")
    events = recorded(m)
    poll(m)
    assert events == [] and states(m, "toy") == {1: AVAILABLE}
    assert served(m) == (1, 1.0)


def test_duplicate_version_directories_load_the_later_sorted_name(make_manager, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tfsctl.core.source")
    base = tmp_path / "toy"
    write_toy_model(base, 7, scale=1.0).rename(base / "0007")
    write_toy_model(base, 7, scale=3.0)  # "7" sorts after "0007": it wins, as in TF Serving
    m = make_manager(single_model_config("toy", base))
    assert m.wait_until_ready(15)
    assert served(m) == (7, 3.0)
    assert any("will be loaded from 7; 0007 is ignored" in r.getMessage() for r in caplog.records)


def test_swap_events_are_load_before_unload(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    m = make_manager(single_model_config("toy", base))
    assert m.wait_until_ready(15)
    events = recorded(m)
    write_toy_model(base, 2, scale=2.0)
    assert m.manager.wait_for_state("toy", 1, {END}, 15)
    got = [(e.version, e.state_name) for e in events]
    assert got == [(2, "START"), (2, "LOADING"), (2, "AVAILABLE"), (1, "UNLOADING"), (1, "END")], got
    assert events[2].previous == LOADING and events[2].seconds > 0
    assert events[4].previous == UNLOADING and not events[4].error


class _Flaky:
    """A loader factory over the real Loader whose first ``failures`` loads fail (a version still being copied)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []

    def __call__(self, name: str, version: int, path: Path) -> Loader:
        self.calls.append(time.monotonic())
        loader = Loader(name, version, path)
        if len(self.calls) <= self.failures:
            def fail() -> None:
                raise LoadError(f"model '{name}' version {version}: not complete yet")
            loader.load = fail  # type: ignore[method-assign]
        return loader


def test_injected_loader_factory_and_load_retries_with_interval(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    factory = _Flaky(failures=2)
    m = make_manager(single_model_config("toy", base), loader_factory=factory, max_num_load_retries=2,
                     load_retry_interval_seconds=0.2)
    assert m.wait_until_ready(15)
    assert len(factory.calls) == 3 and served(m) == (1, 1.0)
    gaps = [b - a for a, b in zip(factory.calls, factory.calls[1:], strict=False)]
    assert min(gaps) >= 0.2, gaps  # each retry waits the retry interval

    base2 = tmp_path / "two"
    write_toy_model(base2, 1)
    gives_up = _Flaky(failures=10)
    m2 = make_manager(single_model_config("two", base2), loader_factory=gives_up, max_num_load_retries=1)
    assert m2.manager.wait_for_state("two", 1, {END}, 15)
    assert len(gives_up.calls) == 2  # first try + max_num_load_retries
    assert "not complete yet" in m2.version_states("two")[0].error


@pytest.mark.parametrize("threads", [1, 2])
def test_num_unload_threads_bounds_concurrent_unloads(make_manager, tmp_path: Path, threads: int) -> None:
    lock = threading.Lock()
    running, peak = [0], [0]
    gate = threading.Event()

    class SlowUnload(Loader):
        def unload(self) -> None:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            gate.wait(15)
            super().unload()
            with lock:
                running[0] -= 1

    for name in ("a", "b"):
        write_toy_model(tmp_path / name, 1)
    both = config(f"model_config_list {{ config {{ name: 'a' base_path: '{tmp_path / 'a'}' }} "
                  f"config {{ name: 'b' base_path: '{tmp_path / 'b'}' }} }}")
    m = make_manager(both, loader_factory=SlowUnload, num_unload_threads=threads)
    assert m.wait_until_ready(15)
    m.apply_config(config("model_config_list {}"))  # remove both models at once
    if threads == 2:
        wait_until(lambda: peak[0] == 2, 15, "two unloads running together")
    else:
        wait_until(lambda: peak[0] == 1, 15, "one unload running")
    gate.set()
    assert m.manager.wait_for_state("a", 1, {END}, 15) and m.manager.wait_for_state("b", 1, {END}, 15)
    assert peak[0] == threads


# --- ServerCore: model status after removal, labels, reload (issue 8 item 7) ---


def test_removed_model_reports_its_versions_in_end(make_manager, tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_toy_model(tmp_path / name, 1)
        write_toy_model(tmp_path / name, 2)
    both = config(f"model_config_list {{ config {{ name: 'a' base_path: '{tmp_path / 'a'}' }} "
                  f"config {{ name: 'b' base_path: '{tmp_path / 'b'}' model_version_policy {{ all {{}} }} }} }}")
    m = make_manager(both)
    assert m.manager.wait_for_state("b", 1, {AVAILABLE}, 15) and m.manager.wait_for_state("b", 2, {AVAILABLE}, 15)
    assert [(s.version, s.state) for s in m.model_status("b")] == [(2, AVAILABLE), (1, AVAILABLE)]
    m.apply_config(config(f"model_config_list {{ config {{ name: 'a' base_path: '{tmp_path / 'a'}' }} }}"))
    assert m.model_names() == ["a"]
    assert m.manager.wait_for_state("b", 1, {END}, 15) and m.manager.wait_for_state("b", 2, {END}, 15)
    # As get_model_status_impl over the ServableStateMonitor: the versions stay, newest first, in END.
    assert [(s.version, s.state, s.error) for s in m.model_status("b")] == [(2, END, ""), (1, END, "")]
    assert [(s.version, s.state) for s in m.model_status("b", 1)] == [(1, END)]
    assert [s.version for s in m.version_states("b")] == [1, 2]
    with pytest.raises(NotFound, match="^Could not find version 3 of model b$"):
        m.model_status("b", 3)
    with pytest.raises(NotFound, match="^Could not find any versions of model nope$"):
        m.model_status("nope")
    with pytest.raises(NotFound, match="no model named 'b'"):
        served(m, "b")


def test_labels_must_point_to_available_versions_without_the_flag(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    for v in (1, 2):
        write_toy_model(base, v, scale=float(v))
    text = (f"model_config_list {{ config {{ name: 'toy' base_path: '{base}' "
            "model_version_policy { specific { versions: 1 } } LABELS } }")
    # As tensorflow_model_server without --allow_version_labels_for_unavailable_models: labels in the first config
    # point to versions not loaded yet, so they are refused (and nothing is configured).
    m = ServerCore(ServerCoreOptions(file_system_poll_wait_seconds=POLL))
    with pytest.raises(FailedPrecondition, match="Request to assign label to version 1 of model toy, which is not "
                       "currently available for inference"):
        m.apply_config(config(text.replace("LABELS", "version_labels { key: 'stable' value: 1 }")))
    assert m.model_names() == []
    m.stop()

    m = make_manager(config(text.replace("LABELS", "")))
    assert m.wait_until_ready(15)
    m.apply_config(config(text.replace("LABELS", "version_labels { key: 'stable' value: 1 }")))
    assert m.labels("toy") == {"stable": 1} and served(m, label="stable") == (1, 1.0)
    with pytest.raises(FailedPrecondition, match="version 2 of model toy"):  # a new label, version not loaded
        m.apply_config(config(text.replace("LABELS", "version_labels { key: 'canary' value: 2 }")))
    assert m.labels("toy") == {"stable": 1}


def test_labels_with_the_flag_may_be_new_but_not_moved_to_unavailable(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1)
    text = f"model_config_list {{ config {{ name: 'toy' base_path: '{base}' LABELS }} }}"
    m = make_manager(config(text.replace("LABELS", "version_labels { key: 'canary' value: 5 }")),
                     allow_version_labels_for_unavailable_models=True)
    assert m.wait_until_ready(15)
    assert m.labels("toy") == {"canary": 5}
    with pytest.raises(FailedPrecondition, match="version 6 of model toy"):  # an existing label moves: refused
        m.apply_config(config(text.replace("LABELS", "version_labels { key: 'canary' value: 6 }")))
    m.apply_config(config(text.replace("LABELS", "version_labels { key: 'canary' value: 1 }")))  # AVAILABLE: fine
    assert served(m, label="canary")[0] == 1


def test_reload_config_waits_for_added_models_and_reports_failures(make_manager, tmp_path: Path) -> None:
    good, broken = tmp_path / "good", tmp_path / "broken"
    write_toy_model(good, 1)
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "saved_model.pb").write_bytes(b"junk")
    m = make_manager(model_server_config_pb2.ModelServerConfig(), max_num_load_retries=0)
    one = config(f"model_config_list {{ config {{ name: 'good' base_path: '{good}' }} }}")
    m.reload_config(one, timeout=30)
    assert m.model_status("good")[0].state == AVAILABLE  # returned only once it was AVAILABLE
    two = config(f"model_config_list {{ config {{ name: 'good' base_path: '{good}' }} "
                 f"config {{ name: 'broken' base_path: '{broken}' }} }}")
    with pytest.raises(Unknown, match="model 'broken' did not become available: version 1: .*cannot parse"):
        m.reload_config(two, timeout=30)
    # Removed and added again: judged by what happens after the reload, not by the END states of its past (its
    # base path is gone now: nothing new happens, so it is still pending at the deadline, which is not an error).
    m.reload_config(one, timeout=30)
    shutil.rmtree(broken)
    m.reload_config(two, timeout=0.2)
    assert m.model_names() == ["broken", "good"]
    with pytest.raises(FailedPrecondition, match="only legal to transition from one ModelConfigList to another"):
        m.reload_config(model_server_config_pb2.ModelServerConfig(), timeout=30)  # as TF Serving
    assert m.model_names() == ["broken", "good"]
    m.reload_config(config("model_config_list {}"), timeout=30)  # this removes every model
    assert m.manager.wait_for_state("good", 1, {END}, 15)
    m.reload_config(one, timeout=30)
    assert m.model_status("good")[0].state == AVAILABLE


def test_emptied_base_path_unloads_with_tf_servings_default(make_manager, tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1)
    m = make_manager(single_model_config("toy", base), servable_versions_always_present=False)
    assert m.wait_until_ready(15)
    shutil.rmtree(base / "1")
    poll(m, 1)  # the empty set is emitted: nothing aspired, so the policy unloads
    assert m.manager.wait_for_state("toy", 1, {END}, 15)
    assert not m.is_ready()
