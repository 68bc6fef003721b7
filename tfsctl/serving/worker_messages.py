"""The messages between the ``serve --workers`` supervisor and its workers (pickled over a pipe), one type each.

A module of its own, importing nothing heavy, so the supervisor (which never loads TensorFlow) and the workers share
the types and neither imports the other's machinery.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

# Sent by the supervisor to a worker that did not stop in time, just before killing it: every thread's stack goes
# to the worker's stderr (the server log), so a hang says where it was.
DUMP_STACKS = signal.SIGUSR1


@dataclass(frozen=True)
class WorkerError:
    """A serving error raised in a worker, by its class name in :mod:`tfsctl.errors` and its message."""

    type_name: str
    message: str


# --- worker -> supervisor ---


@dataclass(frozen=True)
class Started:
    """The worker bound its ports (``rest_port`` 0: REST off)."""

    grpc_port: int
    rest_port: int


@dataclass(frozen=True)
class Ready:
    """The worker's own readiness changed (every configured model has an AVAILABLE version)."""

    ready: bool


@dataclass(frozen=True)
class ReloadAsked:
    """A client's ReloadConfig reached this worker: every worker is to apply ``config``."""

    rid: str
    config: bytes  # a serialized ModelServerConfig
    wait_seconds: float | None


@dataclass(frozen=True)
class Applied:
    """This worker applied reload ``rid``: ``error`` or the serialized ReloadConfigResponse."""

    rid: str
    error: WorkerError | None
    response: bytes


# --- supervisor -> worker ---


@dataclass(frozen=True)
class Apply:
    """Apply ``config`` (a reload asked of some worker, or the last one, for a restarted worker)."""

    rid: str
    config: bytes
    wait_seconds: float | None


@dataclass(frozen=True)
class Reloaded:
    """Reload ``rid``, asked by this worker, was applied by every worker: the answer for its client."""

    rid: str
    error: WorkerError | None
    response: bytes


@dataclass(frozen=True)
class ClusterReady:
    """Whether every worker is ready (what overall health reports)."""

    ready: bool


__all__ = ["DUMP_STACKS", "Applied", "Apply", "ClusterReady", "Ready", "ReloadAsked", "Reloaded", "Started",
           "WorkerError"]
