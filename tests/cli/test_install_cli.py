"""The lab as a user installs it: `pip install` of a clone into a fresh virtualenv, then the console scripts and
`--yours FILE.py:NAME` run from a folder that is not the checkout.

What is real and what is borrowed, so that this stays affordable (seconds, no download): the clone is a real
`git clone` of this repository, built by pip through pyproject.toml's own backend (setuptools) and installed into a
new virtualenv, and every command runs from a temporary folder with no PYTHONPATH, so `core` and `demo` can only come
from the installed copy. The runtime dependencies are not downloaded again: the new virtualenv sees this project's
(a .pth line to its site-packages; torch alone is GBs), pip installs with --no-deps --no-build-isolation, and `pip
check` then proves that pyproject's pins are exactly what is installed. The pins themselves are checked against
requirements.txt, which `make app` and the Space install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

MY_GPT = '''  # a user's own file, far from the lab's checkout
from transformers import GPT2LMHeadModel

def load_model():
    return GPT2LMHeadModel.from_pretrained({ckpt!r})
'''


def _pins(lines) -> dict[str, str]:
    """name -> exact version of every `name==version` line (a local build tag such as +cpu ignored)."""
    pins = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s;+#]+)(\+\w+)?\s*(#.*)?", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_pyproject_pins_are_requirements_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _pins(project["dependencies"]) == _pins((ROOT / "requirements.txt").read_text().splitlines())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh virtualenv with a clone of this repository pip-installed into it."""
    tmp = tmp_path_factory.mktemp("install")
    clone, venv = tmp / "clone", tmp / "venv"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_path("purelib")  # this project's virtualenv: the pinned dependencies, already installed
    Path(purelib, "project_deps.pth").write_text(ours + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    install = subprocess.run(pip + ["install", "-q", "--no-deps", "--no-build-isolation", str(clone)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    check = subprocess.run(pip + ["check"], capture_output=True, text=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPT2_BPE_DIR")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    work = tmp / "elsewhere"
    work.mkdir()
    return dict(venv=venv, py=py, env=env, work=work, check=check, site=Path(purelib))


def run(installed: dict, *cmd, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=installed["work"], env=installed["env"], capture_output=True,
                          text=True, timeout=timeout)


def test_installed_package_imports_from_site_packages(installed):
    assert installed["check"].returncode == 0, installed["check"].stdout + installed["check"].stderr
    probe = run(installed, installed["py"], "-c", """
import json, importlib.metadata as md
import core, demo
from core import compare
from core.tokenizer import load_tokenizer
print(json.dumps({"core": core.__file__, "demo": demo.__file__, "gradio_imported": __import__("sys").modules.get("gradio") is not None,
  "bpe": load_tokenizer(None).encode("Hello, world"),
  "scripts": sorted(e.name for e in md.entry_points(group="console_scripts") if e.name.startswith("gpt2-parity")),
  "pytest11": [e.value for e in md.entry_points(group="pytest11") if e.name == "gpt2_parity"]}))
""")
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout)
    assert Path(got["core"]).parent.parent == installed["site"] and Path(got["demo"]).parent.parent == installed["site"]
    assert got["bpe"] == [15496, 11, 995]  # GPT-2's BPE files came with the package (GPT2_BPE_DIR unset)
    assert got["gradio_imported"] is False
    assert got["scripts"] == ["gpt2-parity", "gpt2-parity-app", "gpt2-parity-generate"]
    assert got["pytest11"] == ["core.pytest_plugin"]


def test_dashboard_command(installed):
    """`gpt2-parity-app` is app.py's program (`gpt2-parity` itself runs in test_yours_from_another_folder; every
    flag and subcommand is the same code as `python -m core.parity`: tests/cli)."""
    app = run(installed, "gpt2-parity-app", "--help")
    assert app.returncode == 0 and "--yours" in app.stdout and "--bpe-dir" in app.stdout


def test_yours_from_another_folder(installed, tiny_checkpoint):
    (installed["work"] / "my_gpt.py").write_text(MY_GPT.format(ckpt=str(tiny_checkpoint)))
    out = run(installed, "gpt2-parity", "--yours", "my_gpt.py:load_model", "--model", tiny_checkpoint,
              "--max-new-tokens", "4", "--num-return-sequences", "1", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["agree"] and report["subject"] == "Yours", report["verdict"]
