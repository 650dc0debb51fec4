"""Line protocol escaping: the shortcut for plain names writes what the full escape writes.

``escape_key``/``escape_measurement`` skip ``_escape`` when one regex search finds nothing it would
change; hypothesis over arbitrary text (specials, backslashes, newlines, unicode) shows the result
(or the refusal of a newline) is the same as always escaping.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.storage.influx import Point, _escape, escape_key, escape_measurement

text = st.text(alphabet=st.sampled_from("ab_-.é\\,= \"\n\r\t") | st.characters(), max_size=12)


@settings(max_examples=2000, deadline=None)
@given(text)
def test_shortcut_escapes_exactly_as_the_full_escape(value: str) -> None:
    for fast, specials in ((escape_key, ",= "), (escape_measurement, ", ")):
        try:
            expected = _escape(value, specials)
        except ValueError:
            with pytest.raises(ValueError):
                fast(value)
        else:
            assert fast(value) == expected


def test_a_point_with_specials_is_escaped() -> None:
    line = Point("vit als", {"device id": "a,b=c", "empty": ""}, {"hr": 70, "s": 'x"y'},
                 5).to_line()
    assert line == 'vit\\ als,device\\ id=a\\,b\\=c hr=70i,s="x\\"y" 5'
