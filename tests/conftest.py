"""Session-wide set-up shared by the unit and live tests."""

from __future__ import annotations

import os

import pytest

from b2bua.netns import cleanup_stale

# Prefixes of the namespaces the live tests create (see b2bua.netns.Lab).
LAB_PREFIXES = ("tb2b", "tdial", "b2bdemo")


@pytest.fixture(scope="session", autouse=True)
def remove_stale_namespaces() -> None:
    """Delete namespaces left by test runs whose process died mid-test."""
    if os.geteuid() != 0:
        return
    for prefix in LAB_PREFIXES:
        cleanup_stale(prefix)
