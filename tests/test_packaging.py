"""Packaging (issue 7): the wheel built from this tree ships the
twistd dropins (and no ``twisted/plugins/__init__.py``), installs into a fresh
venv with a plain ``pip install <wheel>``, and there ``twistd --help`` lists
both plugins and ``twistd -n nbgateway --help`` shows every flag.  Also: the
README's configuration reference is the one generated from
:data:`nbgateway.config.SETTINGS`.

The wheel is built from a copy of the working tree (so the repository gets no
``build/`` or egg-info changes) with ``python -m build --wheel
--no-isolation`` (setuptools and build are in the test extras); the fresh
venv's dependencies come from pip's configured index/cache.  Both happen once
per module.  The fresh-venv tests are marked ``index`` (they need the package
index, or a pip cache or mirror holding every dependency).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from nbgateway.config import SETTINGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIP_TIMEOUT = 600


def _run(args, **kw) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 120)
    return subprocess.run(args, capture_output=True, text=True, check=False, **kw)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
           and not k.startswith(("NB_PROXY_", "NB_MANAGEMENT_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    src = tmp_path_factory.mktemp("src")
    files = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT)
    assert files.returncode == 0, files.stderr
    for rel in filter(None, files.stdout.split("\0")):
        path = os.path.join(ROOT, rel)
        if os.path.isfile(path):
            os.makedirs(src / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(path, src / rel)
    out = tmp_path_factory.mktemp("dist")
    r = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
              str(src)], cwd=src, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    return str(out / wheels[0])


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> str:
    """A fresh venv with the wheel installed; returns its bin directory."""
    root = tmp_path_factory.mktemp("venv") / "v"
    r = _run([sys.executable, "-m", "venv", str(root)], env=_clean_env())
    assert r.returncode == 0, r.stderr
    bindir = str(root / "bin")
    r = _run([os.path.join(bindir, "pip"), "install", "--quiet", wheel], env=_clean_env(),
             timeout=PIP_TIMEOUT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return bindir


def test_wheel_ships_the_dropins_without_a_plugins_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "twisted/plugins/nbgateway_plugin.py" in names
    assert "twisted/plugins/nbmanagement_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names  # it would replace Twisted's own
    assert not [n for n in names if n.endswith("dropin.cache")]
    assert not [n for n in names if n.startswith(("twisted/", "twisted\\"))
                and not n.startswith("twisted/plugins/")]
    assert "nbgateway/__init__.py" in names
    assert any(n.startswith("nbgateway/_proto/") and n.endswith("_pb2.py") for n in names)
    # every package of the source tree made it (the daphne lesson: B.1)
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "nbgateway")):
        if "__init__.py" in files and "__pycache__" not in dirpath:
            rel = os.path.relpath(dirpath, ROOT).replace(os.sep, "/")
            assert f"{rel}/__init__.py" in names, rel
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        text = z.read(entry_points).decode()
    assert "nbgateway-admin = nbgateway.management.cli:main" in text
    assert "nbgateway-wg = nbgateway.wireguard.cli:main" in text


@pytest.mark.index
def test_twistd_lists_both_plugins_in_a_fresh_venv(venv, tmp_path):
    r = _run([os.path.join(venv, "twistd"), "--help"], cwd=tmp_path, env=_clean_env())
    assert r.returncode == 0, r.stderr
    commands = {line.split()[0] for line in r.stdout.splitlines()
                if line.startswith("    ") and line.split()}
    assert {"nbgateway", "nbmanagement"} <= commands, r.stdout


@pytest.mark.index
def test_twistd_nbgateway_help_shows_every_flag(venv, tmp_path):
    r = _run([os.path.join(venv, "twistd"), "-n", "nbgateway", "--help"], cwd=tmp_path,
             env=_clean_env())
    assert r.returncode == 0, r.stderr
    for s in SETTINGS:
        if s.flag and not s.hidden:
            assert f"--{s.flag}" in r.stdout, s.flag
            assert s.env in r.stdout.replace("\n", " ").replace(" ", ""), s.env


@pytest.mark.index
def test_bad_flag_is_a_one_line_error_naming_it(venv, tmp_path):
    r = _run([os.path.join(venv, "twistd"), "-n", "nbgateway", "--wg-port", "nope"],
             cwd=tmp_path, env=_clean_env())
    assert r.returncode != 0
    assert "--wg-port" in r.stdout + r.stderr


@pytest.mark.index
def test_console_scripts_run_in_the_fresh_venv(venv, tmp_path):
    r = _run([os.path.join(venv, "nbgateway-admin"), "quickstart", "--help"], cwd=tmp_path,
             env=_clean_env())
    assert r.returncode == 0 and "--upstream" in r.stdout, r.stderr
    r = _run([os.path.join(venv, "twistd"), "nbmanagement", "--help"], cwd=tmp_path,
             env=_clean_env())
    assert r.returncode == 0 and "--api-addr" in r.stdout, r.stderr
    r = _run([os.path.join(venv, "nbgateway-wg"), "genkey"], cwd=tmp_path, env=_clean_env())
    assert r.returncode == 0 and len(r.stdout.strip()) == 44, r.stderr


# ------------------------------------------------------------------ README reference

def _config_reference():
    spec = importlib.util.spec_from_file_location(
        "config_reference", os.path.join(ROOT, "docs", "config_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_configuration_reference_is_generated_from_settings():
    ref = _config_reference()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert ref.replace(readme) == readme, (
        "README.md's configuration reference is stale: run "
        "`.venv/bin/python docs/config_reference.py --write`")
    for s in SETTINGS:
        assert s.env in readme
        if s.flag:
            assert f"`--{s.flag}`" in readme
