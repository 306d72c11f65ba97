"""The fast tier: unit tests of one module each, on tiny real models (see tests/conftest.py for the fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import without_dropout


@pytest.fixture(scope="session")
def gpt2_exact(tmp_path_factory, tiny_gpt2) -> Path:
    """Tiny GPT-2 with every dropout off, so that two runs of the same steps give the same figures."""
    return without_dropout(tiny_gpt2, tmp_path_factory.mktemp("exact") / "tiny-gpt2")
