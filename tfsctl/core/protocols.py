"""What the request core needs from the parts it is given: small structural interfaces instead of ``Any``.

The request core (``RequestCore``, one layer up) is built over the ServerCore and, with ``--enable_batching``, a
batcher. It depends on these Protocols, not on :class:`~tfsctl.core.server_core.ServerCore` or the Batcher
themselves, so the front ends' one request path can be driven by any object with these methods (TF Serving's
``Manager`` interface is as small: list the servables, hand out a held handle). Both live in this layer or below
it: a Protocol names no class above the core.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: importing the servable module would pull in TensorFlow
    import numpy as np
    from tensorflow_serving.config import model_server_config_pb2

    from tfsctl.core.events import VersionState
    from tfsctl.core.servable import Servable


class ServableManager(Protocol):
    """The manager side of a request: held handles, model names, version states and the config in force.

    :class:`~tfsctl.core.server_core.ServerCore` implements it (labels and the config are its own; handles and
    states come from the Manager it owns).
    """

    def handle(self, name: str, version: int | None = None, label: str | None = None
               ) -> AbstractContextManager[Servable]:
        """The Servable for a request, held (not unloadable) for the ``with`` block."""
        ...

    def peek(self, name: str, version: int | None = None, label: str | None = None) -> Servable | None:
        """The Servable a request would get now, not held (None where the request would fail)."""
        ...

    def model_names(self) -> list[str]:
        """The models configured now, sorted."""
        ...

    def version_states(self, name: str) -> list[VersionState]:
        """Every known version of ``name``, ascending."""
        ...

    def model_status(self, name: str, version: int | None = None) -> list[VersionState]:
        """GetModelStatus's answer, newest first; NotFound when there is nothing to report."""
        ...

    def is_ready(self) -> bool:
        """True when every configured model has an AVAILABLE version."""
        ...

    def config(self) -> model_server_config_pb2.ModelServerConfig:
        """A copy of the config in force."""
        ...

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig, timeout: float) -> None:
        """Apply ``config``, then wait up to ``timeout`` s for the models it adds."""
        ...


class SignatureRunner(Protocol):
    """Runs one signature of a held version: the Batcher's contract, the same as ``Servable.run``'s."""

    def run(self, servable: Servable, signature_name: str, inputs: dict[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """The outputs of ``signature_name`` on ``inputs`` (maybe merged with other requests into one batch)."""
        ...

    def run_now(self, servable: Servable, signature_name: str, inputs: dict[str, np.ndarray],
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray] | None:
        """The outputs at once, in the caller's thread as a batch of its own; None (nothing run) for a request that
        must be split across batches, which then goes through :meth:`run`."""
        ...

    def batches(self, servable: Servable) -> bool:
        """Whether requests to ``servable`` are batched at all."""
        ...

    def submit(self, servable: Servable, signature_name: str, inputs: dict[str, np.ndarray],
               output_filter: Sequence[str], callback: Callable[[Any], None]) -> bool:
        """Queue without a waiting thread: ``callback(task)`` (``task.outputs``/``task.error``) once its batch ran;
        False, nothing queued, for a request the queue does not take whole (it then goes through :meth:`run`)."""
        ...


__all__ = ["ServableManager", "SignatureRunner"]
