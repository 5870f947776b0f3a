"""``Mode.parse``: 'WIDTHxHEIGHT' means ASCII digits (no signs, underscores or other scripts'
digits, which ``int()`` alone would take); spaces and a capital X stay fine. No back end needed."""
from __future__ import annotations

import pytest

from ggmk.modules.display import DisplayError, Mode


@pytest.mark.parametrize("text", ["800x600", " 800 x 600 ", "800X600", "0800x0600"])
def test_width_x_height_in_ascii_digits(text):
    assert Mode.parse(text) == Mode(800, 600)


@pytest.mark.parametrize("text", ["+800x+600", "-800x600", "1_024x768", "\uff18" "00x600",
                                  "800x600x1", "x600", "800x", "8e2x600", "9" * 5000 + "x1"])
def test_other_spellings_are_refused_by_name(text):
    with pytest.raises(DisplayError, match=r"mode .*: expected Mode, 'WIDTHxHEIGHT'"):
        Mode.parse(text)
