"""The availability-preserving policy, case by case and synchronously (TF Serving's availability_preserving_policy_test
cases, plus the sequences the Manager drives it through). No threads, no clock, no disk."""

from __future__ import annotations

import pytest

from tfsctl.core.policy import Action, Harness, ServableAction, VersionSnapshot, next_action

NEW, LOADING, READY, UNLOADING, DISABLED, ERROR = (
    Harness.NEW, Harness.LOADING, Harness.READY, Harness.UNLOADING, Harness.DISABLED, Harness.ERROR,
)


def snaps(*rows: tuple[int, Harness, bool]) -> list[VersionSnapshot]:
    return [VersionSnapshot(v, s, a) for v, s, a in rows]


def load(v: int) -> ServableAction:
    return ServableAction(Action.LOAD, v)


def unload(v: int) -> ServableAction:
    return ServableAction(Action.UNLOAD, v)


@pytest.mark.parametrize(("versions", "expected"), [
    # LoadsNewAspired: nothing unloadable, several loadable: the highest new aspired version loads.
    (snaps((1, UNLOADING, False), (2, ERROR, False), (3, READY, True), (4, NEW, True), (5, NEW, True)), load(5)),
    # UnloadsNonAspiredFirst: unloading 3 costs no availability (4 is ready), so it goes before loading 5.
    (snaps((1, UNLOADING, False), (2, ERROR, False), (3, READY, False), (4, READY, True), (5, NEW, True)),
     unload(3)),
    # UnloadsFirstNonAspiredWhenNoAspired: nothing aspired (the model is being removed): unload.
    (snaps((1, DISABLED, False), (2, READY, False), (3, ERROR, False)), unload(2)),
    # ReturnsNoActionWhenNone.
    (snaps((1, READY, True), (2, ERROR, True), (3, LOADING, True), (4, UNLOADING, False), (5, DISABLED, False)),
     None),
    # DoesNotUnloadWhenOtherNotReady: the new version is still loading: keep the old one serving.
    (snaps((1, READY, False), (2, LOADING, True)), None),
    # DoesNotUnloadWhenOtherInError: the new version failed: the old one keeps serving.
    (snaps((1, READY, False), (2, ERROR, True)), None),
    # UnloadIfOtherReadyEvenIfLoading.
    (snaps((1, READY, False), (2, LOADING, True), (3, READY, True)), unload(1)),
    # UnloadIfOtherReadyEvenIfError.
    (snaps((1, READY, False), (2, ERROR, True), (3, READY, True)), unload(1)),
    # UnloadIfNoAspiredVersionsReady: two non-aspired ready ones: the lowest may go, the other keeps serving.
    (snaps((2, READY, False), (1, READY, False), (3, ERROR, True), (4, LOADING, True)), unload(1)),
    # Nothing at all, or only ended versions: nothing to do.
    ([], None),
    (snaps((1, DISABLED, False), (2, ERROR, False)), None),
    # A first version appears.
    (snaps((7, NEW, True)), load(7)),
])
def test_next_action(versions: list[VersionSnapshot], expected: ServableAction | None) -> None:
    assert next_action(versions) == expected
    assert next_action(reversed(versions)) == expected  # order of the snapshots does not matter
    assert next_action(versions) == expected  # stateless: asking twice gives the same answer


def drive(versions: dict[int, tuple[Harness, bool]], finish: dict[int, Harness]) -> list[ServableAction]:
    """Apply the policy's actions as the Manager does; a requested load/unload completes at once as ``finish``
    says (READY by default for loads, DISABLED for unloads). Returns the actions in order."""
    done: list[ServableAction] = []
    for _ in range(50):
        action = next_action(VersionSnapshot(v, s, a) for v, (s, a) in versions.items())
        if action is None:
            return done
        done.append(action)
        state, aspired = versions[action.version]
        if action.action is Action.LOAD:
            versions[action.version] = (finish.get(action.version, READY), aspired)
        else:
            versions[action.version] = (DISABLED, aspired)
    raise AssertionError(f"the policy never settles: {done}")


def test_swap_loads_the_new_version_before_unloading_the_old() -> None:
    versions = {1: (READY, False), 2: (NEW, True)}
    assert drive(versions, {}) == [load(2), unload(1)]
    assert versions == {1: (DISABLED, False), 2: (READY, True)}


def test_a_new_version_that_fails_keeps_the_old_one_serving() -> None:
    versions = {1: (READY, False), 2: (NEW, True)}
    assert drive(versions, {2: ERROR}) == [load(2)]
    assert versions[1] == (READY, False)


def test_removing_a_model_unloads_every_version_lowest_first() -> None:
    versions = {3: (READY, False), 1: (READY, False), 2: (READY, False)}
    assert drive(versions, {}) == [unload(1), unload(2), unload(3)]


def test_latest_two_loads_both_new_versions_highest_first() -> None:
    versions = {1: (READY, False), 2: (NEW, True), 3: (NEW, True)}
    assert drive(versions, {}) == [load(3), unload(1), load(2)]
