"""Every malformed call raises a Python exception naming the problem, both through
fastconv.conv2d and when the ops are called directly."""
from __future__ import annotations

import pathlib
import re

import pytest
import torch

import fastconv

x = torch.randn(2, 4, 8, 8)
w = torch.randn(6, 4, 3, 3)


BAD_CALLS = [
    ("channel mismatch", lambda: fastconv.conv2d(x, torch.randn(6, 3, 3, 3)), ValueError, "channels"),
    ("groups not dividing in", lambda: fastconv.conv2d(x, torch.randn(6, 1, 3, 3), groups=3), ValueError, "does not divide in_channels"),
    ("groups not dividing out", lambda: fastconv.conv2d(x, torch.randn(5, 2, 3, 3), groups=2), ValueError, "does not divide out_channels"),
    ("input rank 2", lambda: fastconv.conv2d(torch.randn(4, 8), w), ValueError, "3-D .* or 4-D"),
    ("input rank 5", lambda: fastconv.conv2d(torch.randn(1, 2, 4, 8, 8), w), ValueError, "3-D .* or 4-D"),
    ("weight rank 3", lambda: fastconv.conv2d(x, torch.randn(6, 4, 3)), ValueError, "4-D weight"),
    ("zero stride", lambda: fastconv.conv2d(x, w, stride=0), ValueError, "stride must be positive"),
    ("negative stride", lambda: fastconv.conv2d(x, w, stride=(1, -1)), ValueError, "stride must be positive"),
    ("zero dilation", lambda: fastconv.conv2d(x, w, dilation=0), ValueError, "dilation must be positive"),
    ("negative padding", lambda: fastconv.conv2d(x, w, padding=-1), ValueError, "padding must be non-negative"),
    ("kernel larger than input", lambda: fastconv.conv2d(x, torch.randn(6, 4, 11, 3)), ValueError, "larger than the padded input"),
    ("dilated kernel larger", lambda: fastconv.conv2d(x, w, dilation=5), ValueError, "larger than the padded input"),
    ("bool dtype", lambda: fastconv.conv2d(x.bool(), w.bool()), TypeError, "floating-point"),
    ("int dtype", lambda: fastconv.conv2d(x.int(), w.int()), TypeError, "floating-point"),
    ("complex dtype", lambda: fastconv.conv2d(x.to(torch.complex64), w.to(torch.complex64)), TypeError, "floating-point"),
    ("half on cpu", lambda: fastconv.conv2d(x.half(), w.half()), TypeError, "not supported on cpu"),
    ("mixed dtypes", lambda: fastconv.conv2d(x, w.double()), TypeError, "same dtype"),
    ("mixed devices", lambda: fastconv.conv2d(x, w.to("meta")), RuntimeError, "same device"),
    ("wrong bias size", lambda: fastconv.conv2d(x, w, torch.randn(5)), ValueError, r"bias must have shape \(6,\)"),
    ("bias rank 2", lambda: fastconv.conv2d(x, w, torch.randn(6, 1)), ValueError, "bias must have shape"),
    ("same with stride", lambda: fastconv.conv2d(x, w, padding="same", stride=2), ValueError, "'same' is not supported for strided"),
    ("unknown padding string", lambda: fastconv.conv2d(x, w, padding="full"), ValueError, "invalid padding string"),
    ("unknown algo", lambda: fastconv.conv2d(x, w, algo="winograd"), ValueError, "unknown algo 'winograd'"),
    ("depthwise on dense", lambda: fastconv.conv2d(x, w, algo="depthwise"), ValueError, "groups == in_channels"),
    ("unknown activation", lambda: fastconv.conv2d(x, w, activation="tanh"), ValueError, "unknown activation"),
    ("stride tuple of 3", lambda: fastconv.conv2d(x, w, stride=(1, 1, 1)), TypeError, "stride must be an int or a tuple of 2"),
    ("non-tensor input", lambda: fastconv.conv2d([1.0], w), TypeError, "input must be a torch.Tensor"),
    ("float groups", lambda: fastconv.conv2d(x, w, groups=1.0), TypeError, "groups must be an int"),
    ("zero groups", lambda: fastconv.conv2d(x, w, groups=0), ValueError, "groups must be positive"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_functional(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    # F.conv2d raises RuntimeError for malformed calls: `except RuntimeError` catches ours too.
    assert isinstance(info.value, RuntimeError)


OPS = ["reference", "im2col", "direct", "depthwise"]

BAD_OP_ARGS = [
    ("channel mismatch", lambda: (x, torch.randn(6, 3, 3, 3), None, [1, 1], [0] * 4, [1, 1], 1), "input channels"),
    ("groups", lambda: (x, torch.randn(6, 1, 3, 3), None, [1, 1], [0] * 4, [1, 1], 3), "does not divide"),
    ("rank", lambda: (x[0], w, None, [1, 1], [0] * 4, [1, 1], 1), "4-D input"),
    ("stride", lambda: (x, w, None, [0, 1], [0] * 4, [1, 1], 1), "stride must be positive"),
    ("dilation", lambda: (x, w, None, [1, 1], [0] * 4, [-1, 1], 1), "dilation must be positive"),
    ("padding", lambda: (x, w, None, [1, 1], [0, -1, 0, 0], [1, 1], 1), "padding must be non-negative"),
    ("padding len", lambda: (x, w, None, [1, 1], [0, 0], [1, 1], 1), "padding must have 4"),
    ("kernel too big", lambda: (x, torch.randn(6, 4, 9, 9), None, [1, 1], [0] * 4, [1, 1], 1), "larger than the padded input"),
    ("dtype", lambda: (x.half(), w.half(), None, [1, 1], [0] * 4, [1, 1], 1), "float32 or float64"),
    ("mixed dtype", lambda: (x, w.double(), None, [1, 1], [0] * 4, [1, 1], 1), "same dtype"),
    ("bias", lambda: (x, w, torch.randn(3), [1, 1], [0] * 4, [1, 1], 1), "bias must have shape"),
]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("args,match", [c[1:] for c in BAD_OP_ARGS], ids=[c[0] for c in BAD_OP_ARGS])
def test_bad_input_ops_direct(op, args, match):
    """People call torch.ops.fastconv.* directly: the C++ checks name the problem too."""
    a = args()
    if op == "depthwise" and match not in ("4-D input", "float32 or float64", "same dtype"):
        # The depthwise op rejects dense weights first; any clear error is fine there.
        match = match + "|groups == in_channels|depthwise"
    with pytest.raises(RuntimeError, match=match):
        getattr(torch.ops.fastconv, f"{op}_conv2d")(*a)


def test_bad_activation_op():
    with pytest.raises(RuntimeError, match="unknown activation"):
        torch.ops.fastconv.im2col_conv2d(x, w, None, [1, 1], [0] * 4, [1, 1], 1, "tanh")


def test_grad_op_shape_checks():
    with pytest.raises(RuntimeError, match="grad_output has shape"):
        torch.ops.fastconv.reference_conv2d_grad_input(torch.randn(2, 6, 5, 5), w, [2, 4, 8, 8],
                                                        [1, 1], [0] * 4, [1, 1], 1)


def test_auto_rejects_a_dtype_its_choice_cannot_run(monkeypatch):
    # Under the Triton interpreter bf16 passes validation on CPU tensors, but auto picks
    # a CPU kernel (float32/float64 only): the error must say so, not come from C++.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(TypeError, match=r"algo='auto' chose '\w+'.*bfloat16"):
        fastconv.conv2d(x.bfloat16(), w.bfloat16())


def test_cpp_checks_format_messages_without_ostream():
    """Every check in csrc/ goes through FASTCONV_CHECK (csrc/check.h), whose message is
    built without std::ostream: on the GPU image an integer put through an ostream from
    extension code segfaults, so a raw TORCH_CHECK with a number turned a bad input into a
    crash (dev/gpu/error_path_probe.py)."""
    csrc = pathlib.Path(__file__).resolve().parents[1] / "csrc"
    offenders = []
    for path in sorted(csrc.glob("*.[ch]*")):
        if path.name == "check.h":
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//")[0]
            if re.search(r"\bTORCH_CHECK\w*\s*\(|\bc10::str\s*\(|ostringstream|std::cout|std::cerr", code):
                offenders.append(f"{path.name}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_check_messages_format_numbers_and_shapes():
    """The hand-built messages still name the numbers: a bad padding and a bad
    weight shape (list of sizes) as TORCH_CHECK's own formatting would print them."""
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"padding must have 4 elements \(top, bottom, left, right\), got 2"):
        torch.ops.fastconv.im2col_conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match=r"weight sizes must be positive, got \[3, 4, 0, 3\]"):
        torch.ops.fastconv.im2col_conv2d(x, w[:, :, :0], None, [1, 1], [1, 1, 1, 1], [1, 1], 1)
