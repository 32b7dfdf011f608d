"""fastconv.settings and fastconv.use_algorithms: the public layer over the environment
variables and the eager switch."""
import os

import pytest
import torch

import fastconv
from fastconv import _eager, registry
from fastconv.spec import ConvSpec


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in ("FASTCONV_TUNE", "FASTCONV_TUNE_LOG", "FASTCONV_CACHE_DIR", "FASTCONV_DIRECT_LAUNCH",
              "FASTCONV_CPU_ISA", "FASTCONV_FIRST_SIGHT_NOTICE", "FASTCONV_COMPILE_AHEAD"):
        monkeypatch.delenv(k, raising=False)


def test_defaults_read_the_environment(monkeypatch, tmp_path):
    s = fastconv.settings
    assert s.tune == "heuristic" and s.tune_log is None and s.direct_launch is True
    assert s.first_sight_notice == 1.0 and s.compile_ahead is False
    assert s.cache_dir == os.path.join(os.path.expanduser("~"), ".cache", "fastconv")
    monkeypatch.setenv("FASTCONV_TUNE", "0")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FASTCONV_DIRECT_LAUNCH", "0")
    assert s.tune == "heuristic" and s.cache_dir == str(tmp_path) and s.direct_launch is False
    for env, mode in [("compile", "compile"), ("1", "race"), ("race", "race"),
                      ("heuristic", "heuristic"), ("", "heuristic")]:
        monkeypatch.setenv("FASTCONV_TUNE", env)
        assert s.tune == mode
    monkeypatch.setenv("FASTCONV_FIRST_SIGHT_NOTICE", "off")
    assert s.first_sight_notice is None
    monkeypatch.setenv("FASTCONV_FIRST_SIGHT_NOTICE", "0.25")
    assert s.first_sight_notice == 0.25


def test_setting_writes_the_variable_and_flags_restore(tmp_path):
    s = fastconv.settings
    with s.flags(tune=True, tune_log=tmp_path / "t.log", cache_dir=tmp_path, eager_fast_path=False,
                 first_sight_notice=None):
        assert os.environ["FASTCONV_TUNE"] == "race" and s.tune == "race"
        assert os.environ["FASTCONV_FIRST_SIGHT_NOTICE"] == "off"
        assert os.environ["FASTCONV_TUNE_LOG"] == str(tmp_path / "t.log")
        assert os.environ["FASTCONV_CACHE_DIR"] == str(tmp_path)
        assert _eager.ENABLED is False and s.eager_fast_path is False
    assert "FASTCONV_TUNE" not in os.environ and "FASTCONV_CACHE_DIR" not in os.environ
    assert "FASTCONV_FIRST_SIGHT_NOTICE" not in os.environ
    s.tune = False  # the old switch: no timing, which is the heuristic now
    assert s.tune == "heuristic" and os.environ.pop("FASTCONV_TUNE") == "heuristic"
    assert _eager.ENABLED is True
    with pytest.raises(ValueError, match="tune"):
        s.tune = "sometimes"
    with pytest.raises(TypeError, match="unknown setting"):
        with s.flags(speed="max"):
            pass
    with pytest.raises(ValueError, match="first_sight_notice"):
        s.first_sight_notice = -1
    with s.flags(compile_ahead=True):
        assert os.environ["FASTCONV_COMPILE_AHEAD"] == "1" and s.compile_ahead is True
    assert set(s.as_dict()) == {"tune", "tune_log", "cache_dir", "compile_ahead",
                                "first_sight_notice", "direct_launch", "cpu_isa",
                                "eager_fast_path", "algorithms"}


def test_cpu_isa_caps_the_kernels():
    s = fastconv.settings
    best = fastconv._C.cpu_isa_supported()
    assert s.cpu_isa == fastconv._C.cpu_isa()
    x, w = torch.randn(1, 16, 9, 9, dtype=torch.float64), torch.randn(16, 16, 3, 3, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x, w, padding=1)
    with s.flags(cpu_isa="portable"):
        assert s.cpu_isa == fastconv._C.cpu_isa() == "portable"
        assert os.environ["FASTCONV_CPU_ISA"] == "portable"
        torch.testing.assert_close(fastconv.conv2d(x, w, padding=1, algo="direct"), want)
    assert "FASTCONV_CPU_ISA" not in os.environ and fastconv._C.cpu_isa() == best
    with pytest.raises(ValueError, match="portable"):
        s.cpu_isa = "sse9"
    assert fastconv._C.cpu_isa() == best


def test_the_kernels_read_what_settings_write(tmp_path):
    """The Triton host layer reads the same variables (kernels/_plan.py, kernels/_common.py)."""
    pytest.importorskip("triton")
    from fastconv.kernels import _common, _plan

    with fastconv.settings.flags(cache_dir=tmp_path):
        assert _plan.cache_dir() == str(tmp_path)
    with fastconv.settings.flags(direct_launch=False):
        assert _common.DIRECT_LAUNCH is False and not _common._direct_launch_supported()
    assert _common.DIRECT_LAUNCH == _common._direct_launch_supported()


def test_use_algorithms_steers_auto():
    x, w = torch.randn(1, 4, 8, 8), torch.randn(8, 4, 3, 3)
    dw = torch.randn(4, 1, 3, 3)
    spec = fastconv.conv_spec(x, w, padding=1)[2]
    dw_spec = fastconv.conv_spec(x, dw, padding=1, groups=4)[2]
    auto = fastconv.select(spec).name
    other = "direct" if auto != "direct" else "im2col"
    want = torch.nn.functional.conv2d(x, w, padding=1)
    with fastconv.use_algorithms("depthwise", other):
        assert fastconv.settings.algorithms == ("depthwise", other)
        # The first listed that applies: depthwise for the depthwise conv, `other` for the dense one.
        assert fastconv.select(spec).name == other and fastconv.select(dw_spec).name == "depthwise"
        torch.testing.assert_close(fastconv.conv2d(x, w, padding=1), want, atol=1e-4, rtol=1e-4)
        # An explicit algo= still wins.
        assert fastconv.select(spec, auto).name == auto
    assert fastconv.settings.algorithms == () and fastconv.select(spec).name == auto
    with fastconv.use_algorithms("depthwise"):  # applies to nothing dense: auto's own choice
        assert fastconv.select(spec).name == auto
    with pytest.raises(ValueError, match="unknown algo"):
        fastconv.use_algorithms("winograd").__enter__()
    assert fastconv.settings.algorithms == ()


def test_use_algorithms_replans_cached_calls():
    """Plans are cached per geometry with algo="auto" in the key: entering and leaving
    use_algorithms must not serve a plan made under the other choice."""
    from fastconv import functional

    conv = fastconv.nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)

    def planned():
        return functional.plan(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                               conv.groups, conv.algo, conv.activation).alg.name

    auto = planned()
    other = "direct" if auto != "direct" else "im2col"
    with fastconv.use_algorithms(other):
        assert planned() == other
        conv(x)
    assert planned() == auto
