"""Shared pytest fixtures: quiet TensorFlow, toy SavedModels in tmp_path."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def toy_base(tmp_path: Path) -> Path:
    """A model base path holding toy version 1 (y = x * 1.0)."""
    from tfsctl.testing import write_toy_model

    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    return base
