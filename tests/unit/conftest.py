"""Fixtures shared by the unit tests."""

import pytest
from tcp_helpers import IsnControl


@pytest.fixture
def isn(monkeypatch):
    """Choose the ISN of the next connections: `isn.set(2**32 - 3)` (see IsnControl)."""
    return IsnControl(monkeypatch)
