from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from audio import have_tools
from server import Server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long waits first: with tests run side by side (make test), one started last would
    leave the others' workers idle while it runs on."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session", autouse=True)
def _tools() -> None:
    if not have_tools():
        pytest.fail("espeak-ng and sox are required (bash .ci/run installs them)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One running server shared by a module's tests (2 model actors, a fast fake model)."""
    srv = Server(tmp_path_factory.mktemp("run")).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, for tests that kill or stop it."""
    srv = Server(tmp_path / "run")
    try:
        yield srv
    finally:
        srv.stop()
