"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from producer_helpers import FakeCollector


@pytest.fixture
def fake() -> Iterator[FakeCollector]:
    """A scriptable collector end on a real ZeroMQ socket (``producer_helpers.FakeCollector``)."""
    with FakeCollector() as collector:
        yield collector
