"""Shared fixtures for the unit tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No DCLOUD_* variables from the developer's shell leak into a test."""
    for name in list(os.environ):
        if name.startswith("DCLOUD_"):
            monkeypatch.delenv(name)
    return monkeypatch
