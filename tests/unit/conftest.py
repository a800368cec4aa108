"""The unit tests' async tests (pytestmark anyio) run on asyncio, the loop
the gateway runs on."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
