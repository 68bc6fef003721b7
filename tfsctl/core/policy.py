"""The availability-preserving version policy: a pure function from version states to the next action.

As TF Serving's AvailabilityPreservingPolicy (``GetNextAction``), stateless and idempotent:

1. Unload the lowest non-aspired READY version when that cannot cost availability: there is no aspired version
   at all (the model is being removed), or some aspired version is READY, or more than one non-aspired version
   is READY (one of them keeps serving).
2. Otherwise load the highest aspired version that is NEW.
3. Otherwise nothing.

So a new version is loaded before the old one is unloaded, and a new version that fails to load leaves the old
one serving. The Manager asks again after every change and applies the answers; this module has no threads, no
clock and no I/O, so it is tested case by case (tests/test_policy.py mirrors availability_preserving_policy_test).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Harness(enum.Enum):
    """A version's state inside the Manager (TF Serving's LoaderHarness states, merged where equivalent)."""

    NEW = "new"              # aspired, not yet asked to load
    LOADING = "loading"      # load requested, queued or running (with its retries)
    READY = "ready"          # loaded and serving
    UNLOADING = "unloading"  # unload requested; no new handles
    DISABLED = "disabled"    # unloaded (or a load cancelled before it started)
    ERROR = "error"          # every load attempt failed


class Action(enum.Enum):
    LOAD = "load"
    UNLOAD = "unload"


@dataclass(frozen=True)
class VersionSnapshot:
    """What the policy sees of one version: TF Serving's AspiredServableStateSnapshot."""

    version: int
    state: Harness
    aspired: bool


@dataclass(frozen=True)
class ServableAction:
    action: Action
    version: int


def next_action(versions: Iterable[VersionSnapshot]) -> ServableAction | None:
    """The next thing to do for one model's versions, or None when the model is where it should be."""
    snapshots = list(versions)
    has_aspired = any(s.aspired for s in snapshots)
    has_aspired_ready = any(s.aspired and s.state is Harness.READY for s in snapshots)
    unaspired_ready = [s.version for s in snapshots if not s.aspired and s.state is Harness.READY]
    if unaspired_ready and (not has_aspired or has_aspired_ready or len(unaspired_ready) > 1):
        return ServableAction(Action.UNLOAD, min(unaspired_ready))
    new = [s.version for s in snapshots if s.aspired and s.state is Harness.NEW]
    if new:
        return ServableAction(Action.LOAD, max(new))
    return None


__all__ = ["Action", "Harness", "ServableAction", "VersionSnapshot", "next_action"]
