"""The one informative line of a TensorFlow error, for one-line CLI errors (export, run).

TF runtime errors put a generic first line ("Graph execution error:", "Restoring from checkpoint failed. ..."),
node dumps (``[[{{node ...}}]]``), "Detected at node ..." traces and ``[Op:...]`` suffixes around the sentence that
says what went wrong; this picks that sentence.
"""

from __future__ import annotations

import re

_NOISE = re.compile(r"^(Graph execution error:|Detected at node|Node: |<stack traces unavailable>|\[\["
                    r"|Original stack trace|File \"|Traceback|Restoring from checkpoint failed\."
                    r"|Errors may have originated)")


def tf_error_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message that is not TF boilerplate, with node decorations removed."""
    text = str(getattr(exc, "message", None) or exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    chosen = next((line for line in lines if not _NOISE.match(line)), lines[0] if lines else "")
    chosen = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", chosen)
    chosen = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", chosen)
    chosen = re.sub(r"\s*\[Op:[\w.]+\]\s*$", "", chosen).strip()
    return chosen or type(exc).__name__
