"""csrc/blocking.h is the one source of the CPU kernels' blocking constants: every constant
it defines is exported by fastconv._C.blocking() with the value it has there."""
import pathlib
import re

import fastconv

BLOCKING_H = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "blocking.h"


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name[1:]).lower()


def test_every_constant_is_exported():
    text = BLOCKING_H.read_text()
    defined = re.findall(r"constexpr int64_t (k\w+) = ", text)
    assert len(defined) > 20
    exported = fastconv._C.blocking()
    missing = [n for n in defined if _snake(n) not in exported]
    assert not missing, f"constants of blocking.h not in FASTCONV_BLOCKING_CONSTANTS: {missing}"
    assert len(exported) == len(defined)


def test_exported_values_are_the_header_values():
    text = BLOCKING_H.read_text()
    for name, expr in re.findall(r"constexpr int64_t (k\w+) = ([^;]+);", text):
        value = eval(expr.replace("int64_t(1)", "1"), {})  # plain integer expressions (1 << 20)
        assert fastconv._C.blocking()[_snake(name)] == value, name
