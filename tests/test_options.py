"""builders/options.py: options declared as data, checked with the place they come from (no docker)."""

import pytest

from builders import backends
from builders.errors import MatrixError
from builders.options import Option, OptionSet

SET = OptionSet("demo", [
    Option("size", int, 4, "how many", what="a positive integer", check=lambda v: v > 0, aliases=("n",)),
    Option("mode", str, "fast", "which way", allowed=("fast", "slow")),
    Option("ratio", (int, float), 0.5, "a share"),
    Option("tag", str, None, "free text", parse=lambda v, where: None if v is None else v.strip()),
])


def test_defaults_aliases_and_values():
    assert SET.normalize({}, "m.yaml:3") == {"size": 4, "mode": "fast", "ratio": 0.5, "tag": None}
    assert SET.normalize({"n": 8, "mode": "slow", "ratio": 1, "tag": " x "}, "w") == {
        "size": 8, "mode": "slow", "ratio": 1, "tag": "x"}
    assert SET.normalize({"size": None}, "w")["size"] == 4  # null = the default


@pytest.mark.parametrize("values, message", [
    ({"size": 0}, "m.yaml:3: demo option size=0 must be a positive integer"),
    ({"size": True}, "m.yaml:3: demo option size=True must be a positive integer"),  # a bool is not an int
    ({"size": "4"}, "m.yaml:3: demo option size='4' must be a positive integer"),
    ({"mode": "quick"}, "m.yaml:3: demo option mode='quick' must be one of fast, slow"),
    ({"ratio": "half"}, "m.yaml:3: demo option ratio='half' must be a int or float"),
    ({"colour": 1}, "m.yaml:3: unknown demo option 'colour'; known: size, mode, ratio, tag"),
])
def test_errors_name_the_place_the_option_and_what_is_valid(values, message):
    with pytest.raises(MatrixError) as e:
        SET.normalize(values, "m.yaml:3")
    assert str(e.value) == message


def test_every_backend_declares_its_options_with_docs():
    for name in backends.USER_BACKENDS:
        opts = backends.get(name).options
        assert list(opts) and all(o.doc and o.describe() for o in opts.options.values()), name
        rows = opts.table()
        assert len(rows) == len(opts.options) and all(r.startswith(f"| {name} | `") for r in rows)
        # the defaults a backend completes are the declared ones
        normalized = backends.get(name).normalize_options({}, "matrix.yaml:1")
        for key, o in opts.options.items():
            if key in normalized:
                assert normalized[key] == o.default, (name, key)


def test_mlc_conv_template_known_ones_pass():
    from builders.backends.mlc.conv_templates import CONV_TEMPLATES

    mlc = backends.get("mlc")
    for name in CONV_TEMPLATES:
        assert mlc.normalize_options({"conv_template": name}, "w")["conv_template"] == name
