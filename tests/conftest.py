"""Shared test configuration: hypothesis profiles and the golden-file option.

Profiles: ``ci`` (bounded, the default under CI=true) and ``dev`` (more examples, the
default elsewhere); choose with ``HYPOTHESIS_PROFILE=...``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# The pass manager verifies the graph after every pass in tests (issue 4).
os.environ.setdefault("EMBER_VERIFY", "1")

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "dev",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/golden instead of comparing",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))
