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
# pip configuration key (its last dotted part) -> uv option; values are space-separated lists
UV_OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
              "find-links": "--find-links", "constraint": "--constraint"}
TRUE = {"1", "true", "yes", "on"}


def pip_settings(pip_config: str) -> list[tuple[str, str]]:
    """(key without its section, value) of every line of `pip config list` output, in order."""
    settings = []
    for line in pip_config.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings.append((key.rsplit(".", 1)[-1], str(ast.literal_eval(value))))
    return settings


def uv_options(pip_config: str) -> list[str]:
    """uv options for the indexes, links, constraints and no-index in `pip config list`
    output."""
    options: list[str] = []
    for key, value in pip_settings(pip_config):
        if key == "no-index" and value.lower() in TRUE and "--no-index" not in options:
            options.append("--no-index")
        option = UV_OPTIONS.get(key)
        if option is None:
            continue
        for item in value.split():
            if option == "--index-url":  # uv takes one default index: the last one wins
                options = [o for o in options if not o.startswith("--index-url=")]
            if f"{option}={item}" not in options:
                options.append(f"{option}={item}")
    return options


def uv_environment(pip_config: str, environ: dict[str, str]) -> dict[str, str]:
    """`environ`, with SSL_CERT_FILE set to the CA bundle pip is configured with (uv trusts
    its own roots otherwise) unless the variable is set already."""
    env = dict(environ)
    for key, value in pip_settings(pip_config):
        if key == "cert" and "SSL_CERT_FILE" not in environ:
            env["SSL_CERT_FILE"] = value
    return env


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    venv = Path(argv[0]).resolve()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    uv = venv / "bin" / "uv"
    try:
        subprocess.run([*pip, "install", "-q", "--no-compile", "uv"], check=True)
        config = subprocess.run([*pip, "config", "list"], check=True, capture_output=True,
                                text=True).stdout
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv),
                        "--index-strategy", "unsafe-best-match", *uv_options(config),
                        *TARGET.split()], check=True, cwd=ROOT,
                       env=uv_environment(config, dict(os.environ)))
        return 0
    except (subprocess.CalledProcessError, OSError, ValueError, SyntaxError) as err:
        print(f"install with uv failed ({err}); installing with pip", file=sys.stderr)
    subprocess.run([*pip, "install", "-q", "--no-compile", *TARGET.split()], check=True,
                   cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
