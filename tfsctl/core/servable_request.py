"""Which version a request names: the one home of the version/label rules shared by every API.

TF Serving's ServerCore::ServableRequestFromModelSpec: a request names a version, a version label, or neither
(the latest AVAILABLE version). The rules here are used by the Manager's handles and by GetModelStatus, so the
messages and codes are the same over gRPC and REST.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tfsctl.core.events import AVAILABLE
from tfsctl.errors import InvalidArgument


def require_version_or_label(name: str, version: int | None, label: str | None) -> None:
    """A version and a label together are a client error (ModelSpec makes them a oneof)."""
    if version is not None and label:
        raise InvalidArgument(f"model '{name}': give a version or a version label, not both")


def unknown_label(name: str, label: str, labels: Mapping[str, int]) -> InvalidArgument:
    """TF Serving's INVALID_ARGUMENT "Unrecognized servable version label: L", naming the labels there are."""
    known = ", ".join(sorted(labels)) or "none"
    return InvalidArgument(f"Unrecognized servable version label: {label} (model '{name}' has labels: {known})")


def resolve_label(name: str, label: str, labels: Mapping[str, int]) -> int:
    """The version ``label`` points to; :func:`unknown_label` when the model has no such label."""
    if label not in labels:
        raise unknown_label(name, label, labels)
    return labels[label]


def has_available_version(states: Iterable[object]) -> bool:
    """True when some state (an int, or anything with ``.state``) is AVAILABLE: "the model can serve"."""
    return any(getattr(s, "state", s) == AVAILABLE for s in states)


__all__ = ["has_available_version", "require_version_or_label", "resolve_label", "unknown_label"]
