"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from producer_helpers import FakeCollector

from producer.transport.client import close_clients


@pytest.fixture
def fake() -> Iterator[FakeCollector]:
    """A scriptable collector end on a real ZeroMQ socket (``producer_helpers.FakeCollector``)."""
    with FakeCollector() as collector:
        yield collector


@pytest.fixture
def clients_stopped() -> Iterator[None]:
    """Stop every producer client at the test's end (``pytestmark`` of the modules that need it)."""
    yield
    close_clients(timeout=0)
