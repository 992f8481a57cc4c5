"""Fixtures shared by both layers; plain helpers live in tests/helpers and are imported explicitly."""

from __future__ import annotations

import pytest

from sae_sweep.config import RunConfig
from tests.helpers.build import build_cfg


@pytest.fixture
def small_cfg() -> RunConfig:
    return build_cfg()
