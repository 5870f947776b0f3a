"""The JSON codec (``ggmk emit TYPE --payload JSON``): a number too large for a float is
refused naming the type and field, for f64 as for f32 (json turned 1e400 into infinity without
a word, while f32's 1e39 was refused); Infinity written as such is still an infinity."""
import math

import pytest

from ggmk.errors import PayloadError
from ggmk.typereg import load_types

T = load_types('[types.T]\nid = 5\npayload = { f = "f64", g = "f32", n = "u8", b = "bytes" }\n'
               ).info("T")


@pytest.mark.parametrize("field,js,kind", [
    ("f", '{"f": 1e400, "g": 1, "n": 1, "b": ""}', "f64"),
    ("f", '{"f": -1e400, "g": 1, "n": 1, "b": ""}', "f64"),
    ("g", '{"f": 1, "g": 1e400, "n": 1, "b": ""}', "f32"),
])
def test_json_float_overflow_is_refused(field, js, kind):
    with pytest.raises(PayloadError, match=rf"T: field '{field}' \({kind}\): -?1e400 is out of "
                                           rf"range for {kind}"):
        T.encode_json(js)


def test_json_overflow_elsewhere_reads_as_a_float():
    with pytest.raises(PayloadError, match=r"field 'n' \(u8\): expected an integer, got 1e400"):
        T.encode_json('{"f": 1, "g": 1, "n": 1e400, "b": ""}')
    with pytest.raises(PayloadError, match=r"field 'b' \(bytes\): expected a hex string, got "
                                           r"float 1e400"):
        T.encode_json('{"f": 1, "g": 1, "n": 1, "b": 1e400}')


def test_json_infinity_and_large_finite_floats_still_pass():
    d = T.decode(T.encode_json('{"f": Infinity, "g": -Infinity, "n": 1, "b": "00"}'))
    assert d["f"] == math.inf and d["g"] == -math.inf
    assert T.decode(T.encode_json('{"f": 1.5e308, "g": 3e38, "n": 1, "b": ""}'))["f"] == 1.5e308
