"""The README's configuration table lists every setting."""

from __future__ import annotations

from pathlib import Path

from aster.server.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [name for name in Settings.model_fields if f"`ASTER_{name.upper()}`" not in text]
    assert not missing, f"README.md does not document: {missing}"
