"""Fixtures for the Kubernetes tests (helpers live in k8s_helpers.py and kubelet_volume.py)."""

from __future__ import annotations

import pytest
from k8s_helpers import rules_json
from kubelet_volume import ConfigMapVolume


@pytest.fixture
def volume(tmp_path) -> ConfigMapVolume:
    vol = ConfigMapVolume(tmp_path / "rules")
    vol.write({"rules.json": rules_json("a")})
    return vol
