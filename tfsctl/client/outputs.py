"""Turn a PredictResponse's decoded outputs into a class map or a top-k classification, and name the classes.

Outputs are decoded from the typed ``*_val`` fields (TF Serving's default) or ``tensor_content`` alike, by the
numpy codec (no TensorFlow).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tfsctl.errors import ClientError
from tfsctl.voc import VOC_CLASSES

MAX_CLASS_ID = 65535


class ClassNames:
    """Class id -> display name: a ``--labels`` file (one name per line, line i = id i), or VOC by default."""

    def __init__(self, names: tuple[str, ...] | list[str] | None = None, fallback: str = "class") -> None:
        self.names = tuple(names) if names is not None else None
        self.fallback = fallback

    @classmethod
    def voc(cls) -> ClassNames:
        return cls(VOC_CLASSES)

    @classmethod
    def from_file(cls, path: str | Path) -> ClassNames:
        """One class name per line; blank lines keep their id (shown as ``class N``); ``#`` lines are comments."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ClientError(f"--labels {p}: file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ClientError(f"--labels {p}: cannot read it: {e}") from None
        lines = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise ClientError(f"--labels {p}: no class names in it (expected one name per line)")
        return cls(lines)

    def __call__(self, class_id: int) -> str:
        if self.names is not None and 0 <= class_id < len(self.names) and self.names[class_id]:
            return self.names[class_id]
        return f"{self.fallback} {class_id}"


def to_class_map(arr: np.ndarray, key: str) -> np.ndarray:
    """An output as a 2-D int32 class map: integer [1,H,W], [H,W], [1,H,W,1]; float [1,H,W,C] -> argmax."""
    a = np.asarray(arr)
    if a.dtype.kind == "f" and a.ndim >= 3 and a.shape[-1] > 1:
        a = np.argmax(a, axis=-1)
    if a.dtype.kind == "b":
        a = a.astype(np.int32)
    if a.dtype.kind not in "iu":
        raise ClientError(f"output '{key}' has dtype {a.dtype}, expected integer class ids or [N,H,W,C] scores")
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[0] >= 1:
        a = a[0]  # one image was sent
    if a.ndim != 2 or 0 in a.shape:
        raise ClientError(f"output '{key}' has shape {list(np.shape(arr))}, expected a class map [N,H,W]")
    if a.size and (int(a.min()) < 0 or int(a.max()) > MAX_CLASS_ID):
        raise ClientError(f"output '{key}' holds class ids {int(a.min())}..{int(a.max())}, not in 0..{MAX_CLASS_ID}")
    return a.astype(np.int32, copy=False)


def is_class_map(arr: np.ndarray) -> bool:
    """Whether an output is a per-pixel map (rather than per-image scores)."""
    a = np.asarray(arr)
    if a.dtype.kind in "iub":
        return a.ndim in (2, 3) or (a.ndim == 4 and a.shape[-1] == 1)
    return a.dtype.kind == "f" and a.ndim == 4


@dataclass(frozen=True)
class TopClass:
    """One row of a classification: rank (1 = best), class id (None when only names came back), name, score."""

    rank: int
    class_id: int | None
    name: str
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


def top_k(arrays: dict[str, np.ndarray], keys: tuple[str, ...], names: ClassNames, k: int = 5) -> list[TopClass]:
    """Top-k classes of the first image from a scores tensor ([N,C] or [C]) and optional ``classes`` tensor."""
    float_keys = [key for key in keys if np.asarray(arrays[key]).dtype.kind == "f"]
    if not float_keys:
        raise ClientError(f"outputs {', '.join(keys)}: no float scores to rank")
    scores = np.asarray(arrays[float_keys[0]], dtype=np.float64)
    if scores.ndim == 2:
        scores = scores[0]
    if scores.ndim != 1 or scores.size == 0:
        raise ClientError(f"output '{float_keys[0]}' has shape {list(arrays[float_keys[0]].shape)}, expected [N,C]")
    labels = None
    for key in keys:
        if key in float_keys:
            continue
        lab = np.asarray(arrays[key])
        lab = lab[0] if lab.ndim == 2 else lab
        if lab.shape == scores.shape:
            labels = lab
    order = np.argsort(-scores, kind="stable")[: max(1, k)]
    rows = []
    for rank, i in enumerate(order.tolist(), start=1):
        if labels is None:
            rows.append(TopClass(rank, int(i), names(int(i)), float(scores[i])))
        elif labels.dtype.kind in "iu":
            cid = int(labels[i])
            rows.append(TopClass(rank, cid, names(cid), float(scores[i])))
        else:
            value = labels[i]
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            rows.append(TopClass(rank, None, text, float(scores[i])))
    return rows
