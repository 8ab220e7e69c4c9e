"""Create the virtual environment and install the project with its dev extras (`make install`).

Usage: python3 tools/install.py VENV

uv installs the same packages as pip in a third of the time (BENCHMARKS.md, "The install
with uv"), most of it spent unpacking torch and its CUDA libraries. uv does not read pip's
configuration, so the index URLs, find-links, constraints, no-index and CA bundle pip is
configured with (files and PIP_* variables, as `pip config list` shows them) are handed to
it, and it picks the best version across all indexes as pip does. Where uv cannot be
installed or fails, pip installs.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = "-e .[dev]"
# pip configuration key -> uv option; values are space-separated lists
UV_OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
              "find-links": "--find-links", "constraint": "--constraint"}
TRUE = {"1", "true", "yes", "on"}
MIN_PYTHON = (3, 11)  # setup.cfg's python_requires
# where `pip install` takes a key from, first to last: a PIP_* variable, the [install]
# section, the [global] section (other commands' sections do not apply)
PRECEDENCE = (":env:", "install", "global")


def pip_settings(pip_config: str) -> dict[str, str]:
    """{key: value} that `pip install` uses, from `pip config list` output (one
    `section.key='value'` a line), each key from its first place in PRECEDENCE."""
    found: dict[str, tuple[int, str]] = {}
    for line in pip_config.splitlines():
        name, sep, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if not sep or section not in PRECEDENCE:
            continue
        rank = PRECEDENCE.index(section)
        if key not in found or rank < found[key][0]:
            found[key] = (rank, str(ast.literal_eval(value)))
    return {key: value for key, (_, value) in found.items()}


def uv_options(settings: dict[str, str]) -> list[str]:
    """uv options for pip's index URLs, find-links, constraints and no-index."""
    options = ["--no-index"] if settings.get("no-index", "").lower() in TRUE else []
    for key, value in settings.items():
        option = UV_OPTIONS.get(key)
        if option is not None:
            options += [f"{option}={item}" for item in value.split()]
    return options


def uv_environment(settings: dict[str, str], environ: dict[str, str]) -> dict[str, str]:
    """`environ`, with SSL_CERT_FILE set to the CA bundle pip is configured with (uv trusts
    its own roots otherwise) unless the variable is set already."""
    env = dict(environ)
    if "cert" in settings and "SSL_CERT_FILE" not in environ:
        env["SSL_CERT_FILE"] = settings["cert"]
    return env


def venv_program(venv: Path, name: str) -> Path:
    """A program of the virtual environment: bin/NAME, or Scripts\\NAME.exe on Windows."""
    if os.name == "nt":
        return venv / "Scripts" / f"{name}.exe"
    return venv / "bin" / name


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):  # --help made a 6 GB folder named --help
        print(__doc__, file=sys.stderr)
        return 2
    if sys.version_info < MIN_PYTHON:  # before a venv and uv are made for nothing
        print(f"install.py: error: the project needs Python "
              f"{'.'.join(map(str, MIN_PYTHON))} or newer; this is {sys.version.split()[0]} "
              f"({sys.executable}). Run it with a newer one, e.g. `python3.11 "
              f"tools/install.py {argv[0]}`", file=sys.stderr)
        return 2
    venv = Path(argv[0]).resolve()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_program(venv, "python")), "-m", "pip"]
    uv = venv_program(venv, "uv")
    try:
        subprocess.run([*pip, "install", "-q", "--no-compile", "uv"], check=True)
        settings = pip_settings(subprocess.run([*pip, "config", "list"], check=True,
                                               capture_output=True, text=True).stdout)
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv),
                        "--index-strategy", "unsafe-best-match", *uv_options(settings),
                        *TARGET.split()], check=True, cwd=ROOT,
                       env=uv_environment(settings, dict(os.environ)))
        return 0
    except (subprocess.CalledProcessError, OSError, ValueError, SyntaxError) as err:
        print(f"install with uv failed ({err}); installing with pip", file=sys.stderr)
    subprocess.run([*pip, "install", "-q", "--no-compile", *TARGET.split()], check=True,
                   cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
