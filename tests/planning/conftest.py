"""Planner test fixtures."""

from __future__ import annotations

import pytest
from planning_fakes import FakeTimer

from mope_deploy.planning import planner


@pytest.fixture
def fake_timer(monkeypatch) -> FakeTimer:
    """:func:`mope_deploy.planning.planner.measure` replaced by :class:`FakeTimer`."""
    timer = FakeTimer()
    monkeypatch.setattr(planner, "measure", timer)
    return timer
