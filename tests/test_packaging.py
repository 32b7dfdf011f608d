"""Packaging: one version, PEP 621 metadata, a license, `fastconv --version`, and a build that
either uses the environment's own torch or stops at once with the right command."""
import importlib.metadata
import os
import subprocess
import sys
import tomllib

import pytest

import fastconv
from fastconv.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RIGHT_COMMAND = "pip install --no-build-isolation -e ."


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_one_version_everywhere(capsys):
    from fastconv.version import __version__

    assert fastconv.__version__ == __version__
    # The installed distribution's metadata is read from the same file (pyproject's dynamic
    # version), so `pip show fastconv` agrees with the package.
    assert importlib.metadata.version("fastconv") == __version__
    assert "version" in _pyproject()["project"]["dynamic"]
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert "version=" not in f.read()
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fastconv {__version__}"


def test_metadata_license_author_and_build_system():
    py = _pyproject()
    project = py["project"]
    assert project["name"] == "fastconv" and project["license"] == "MIT"
    assert project["authors"] == [{"name": "fastconv developers"}]
    assert project["scripts"]["fastconv"] == "fastconv.cli:main"
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License") and "fastconv developers" in text
    # The build never pulls torch: it must be the environment's own (see setup.py).
    requires = py["build-system"]["requires"]
    assert requires and not any(r.replace(" ", "").lower().startswith("torch") for r in requires)
    meta = importlib.metadata.metadata("fastconv")
    assert meta["License-Expression"] == "MIT" or meta["License"] == "MIT"
    assert "fastconv developers" in (meta["Author"] or "") + (meta["Author-email"] or "")


def _setup_py(env_extra: dict, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "setup.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_setup_refuses_an_isolated_build_environment(tmp_path):
    """pip's isolated builds put pip-build-env-* directories on sys.path: setup.py must stop
    there (before compiling anything) with the command that works."""
    fake = tmp_path / "pip-build-env-test" / "site"
    fake.mkdir(parents=True)
    out = _setup_py({"PYTHONPATH": str(fake)}, "--version")
    assert out.returncode != 0
    assert "isolated build" in out.stderr and RIGHT_COMMAND in out.stderr
    assert "Traceback" not in out.stderr


def test_setup_without_torch_says_what_to_do(tmp_path):
    """A Python that cannot import torch: the message names the right command."""
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
    out = _setup_py({"PYTHONPATH": str(tmp_path)}, "--version")
    assert out.returncode != 0 and "torch is not importable" in out.stderr
    assert RIGHT_COMMAND in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_pip_isolated_build_fails_fast_with_the_right_command(tmp_path):
    """The real thing: `pip wheel .` with build isolation. Skipped when pip cannot set up the
    isolated environment (no setuptools to download), which says nothing about us."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), ROOT],
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    if "isolated build" not in text and ("Could not find a version" in text
                                         or "No matching distribution" in text):
        pytest.skip("pip could not install the build requirements into an isolated environment")
    assert out.returncode != 0 and "isolated build" in text and RIGHT_COMMAND in text
    assert not list(tmp_path.glob("*.whl"))


def test_shipped_tiles_are_package_data():
    """kernels/tiles/<gpu slug>.json installs with fastconv.kernels, and each file names the
    GPU its file name is the slug of (kernels/_plan.gpu_slug) and holds keyed tiles."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert '"fastconv.kernels": ["tiles/*.json"]' in f.read()
    tiles_dir = os.path.join(ROOT, "kernels", "tiles")
    assert os.path.isdir(tiles_dir)
    import json
    import re

    for name in os.listdir(tiles_dir):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(tiles_dir, name)) as f:
            data = json.load(f)
        slug = re.sub(r"[^a-z0-9]+", "-", data["gpu"].lower()).strip("-")
        assert name == slug + ".json"
        assert all(k.startswith(f"v{data['schema']}|") and isinstance(v, dict)
                   for k, v in data["tiles"].items())
