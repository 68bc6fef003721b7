"""State events: the bus, the monitor that status reports read, the metrics subscriber, and the core's layering."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

from tfsctl.core import events as ev
from tfsctl.core.events import (
    AVAILABLE,
    END,
    LOADING,
    START,
    UNLOADING,
    EventBus,
    ServableStateEvent,
    ServableStateMonitor,
    VersionState,
)
from tfsctl.serving.metrics import Metrics

CORE = Path(__file__).resolve().parents[1] / "tfsctl" / "core"


def lifecycle(bus: EventBus, name: str, version: int, *, error: str = "") -> None:
    bus.publish(ServableStateEvent(name, version, START))
    bus.publish(ServableStateEvent(name, version, LOADING, previous=START))
    if error:
        bus.publish(ServableStateEvent(name, version, END, error, previous=LOADING, seconds=0.5))
        return
    bus.publish(ServableStateEvent(name, version, AVAILABLE, previous=LOADING, seconds=1.5))


def test_bus_delivers_in_order_and_a_failing_subscriber_does_not_stop_the_others(caplog) -> None:
    bus = EventBus()
    seen: list[tuple[str, int]] = []

    def broken(event: ServableStateEvent) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    unsubscribe = bus.subscribe(lambda e: seen.append((e.state_name, e.version)))
    lifecycle(bus, "m", 1)
    assert seen == [("START", 1), ("LOADING", 1), ("AVAILABLE", 1)]
    assert "subscriber bug" in caplog.text
    unsubscribe()
    bus.publish(ServableStateEvent("m", 1, UNLOADING, previous=AVAILABLE))
    assert len(seen) == 3


def test_monitor_keeps_ended_versions_of_a_removed_model() -> None:
    bus = EventBus()
    monitor = ServableStateMonitor(bus)
    assert monitor.version_states("m") == [] and monitor.state("m", 1) is None
    lifecycle(bus, "m", 1)
    lifecycle(bus, "m", 2, error="bad graph")
    bus.publish(ServableStateEvent("m", 1, UNLOADING, previous=AVAILABLE))
    bus.publish(ServableStateEvent("m", 1, END, previous=UNLOADING))
    assert monitor.version_states("m") == [VersionState(1, END), VersionState(2, END, "bad graph")]
    assert monitor.state("m", 2) == VersionState(2, END, "bad graph")


def test_monitor_memory_is_bounded() -> None:
    bus = EventBus()
    monitor = ServableStateMonitor(bus)
    for v in range(1, ev.MAX_ENDED_PER_MODEL + 11):
        lifecycle(bus, "m", v, error="x")
    bus.publish(ServableStateEvent("m", 999, START))
    kept = monitor.version_states("m")
    assert len(kept) == ev.MAX_ENDED_PER_MODEL + 1 and kept[0].version == 11  # the oldest ended ones went
    for i in range(ev.MAX_FORGOTTEN_MODELS + 5):
        lifecycle(bus, f"gone{i}", 1, error="x")
    assert monitor.version_states("gone0") == []  # the oldest removed models are forgotten
    assert len(monitor.version_states(f"gone{ev.MAX_FORGOTTEN_MODELS + 4}")) == 1
    assert monitor.state("m", 999) == VersionState(999, START)  # a live model is never forgotten


def test_sequence_mark_hides_states_from_before() -> None:
    bus = EventBus()
    monitor = ServableStateMonitor(bus)
    lifecycle(bus, "m", 1, error="old failure")
    mark = monitor.sequence()
    assert monitor.version_states("m", since=mark) == []
    bus.publish(ServableStateEvent("m", 2, START))
    assert monitor.version_states("m", since=mark) == [VersionState(2, START)]
    assert [s.version for s in monitor.version_states("m")] == [1, 2]


def test_waiters_wake_on_the_event() -> None:
    bus = EventBus()
    monitor = ServableStateMonitor(bus)
    entered = threading.Event()
    result: list[bool] = []

    def waiter() -> None:
        entered.set()
        result.append(monitor.wait_for_state("m", 3, {AVAILABLE}, timeout=30))

    t = threading.Thread(target=waiter)
    t.start()
    assert entered.wait(10)
    lifecycle(bus, "m", 3)
    t.join(10)
    assert result == [True]
    assert monitor.wait_for_state("m", 4, {AVAILABLE}, timeout=0) is False


def test_metrics_count_loads_failures_and_unloads_from_events() -> None:
    metrics = Metrics()
    bus = EventBus()
    bus.subscribe(metrics.on_servable_state)
    lifecycle(bus, "m", 1)
    lifecycle(bus, "m", 2, error="bad")
    bus.publish(ServableStateEvent("m", 1, UNLOADING, previous=AVAILABLE))
    bus.publish(ServableStateEvent("m", 1, END, previous=UNLOADING, seconds=0.25))
    bus.publish(ServableStateEvent("m", 3, END, previous=START))  # a load cancelled before it began: no count

    def count(event: str) -> float:
        return metrics.registry.get_sample_value("tfsctl_model_events_total",
                                                 {"model_name": "m", "event": event}) or 0.0

    assert (count("load"), count("load_error"), count("unload")) == (1.0, 1.0, 1.0)
    total = metrics.registry.get_sample_value("tfsctl_model_event_seconds_sum", {"model_name": "m", "event": "load"})
    assert total == 1.5


def test_core_modules_of_the_manager_do_not_import_serving_or_client() -> None:
    """Layers point down: the manager side of core/ reports through events, never calls serving/ or client/."""
    for name in ("events", "policy", "manager", "source", "server_core", "servable_request"):
        tree = ast.parse((CORE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                assert not target.startswith(("tfsctl.serving", "tfsctl.client")), f"core/{name}.py imports {target}"
