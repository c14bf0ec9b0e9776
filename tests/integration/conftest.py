"""Integration tests: each test gets its own network namespace (see netns.py).

Every test under tests/integration is marked ``integration``; all of them are skipped, with the reason,
only when this machine cannot make namespaces and TUN devices (not root, no /dev/net/tun, no `ip`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import NetNS, reap_stale, unavailable_reason

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = unavailable_reason()
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def _reap_stale_namespaces() -> None:
    """Namespaces (and their processes) left by an earlier run that was killed before teardown."""
    reap_stale()


@pytest.fixture
def netns(_reap_stale_namespaces: None) -> Iterator[NetNS]:
    """A private network namespace with loopback up, deleted (with its processes) at teardown."""
    ns = NetNS.create()
    try:
        yield ns
    finally:
        ns.close()
