"""Helpers for the rules tests: write rule files into tmp_path, build synthetic exchanges."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def write(tmp_path: Path):
    """write("name.yaml", text) -> path (text is dedented; parents created)."""
    def _write(name: str, text: str | bytes) -> str:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(textwrap.dedent(text).lstrip("\n"))
        return str(p)
    return _write
