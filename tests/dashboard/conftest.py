"""Fixtures for the dashboard tests (helpers live in dash_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dash_helpers import Clock, Dashboard


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def start_dashboard(tmp_path: Path) -> Iterator:
    """start_dashboard(**create_app kwargs) -> Dashboard on tmp_path/dash.db (the same file each call)."""
    running: list[Dashboard] = []

    def start(db: Path | None = None, **kw) -> Dashboard:
        d = Dashboard(db or tmp_path / "dash.db", **kw)
        running.append(d)
        return d

    yield start
    for d in running:
        if d.thread.is_alive():
            d.stop()


@pytest.fixture
def dash(start_dashboard, clock) -> Dashboard:
    return start_dashboard(clock=clock)
