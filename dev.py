#!/usr/bin/env python3
"""Developer entry point (standard library only, Python >= 3.10).

    python3 dev.py test [PYTEST ARGS...]   run the test suite
    python3 dev.py demo [ARGS...]          run the demo (integration_tests/demo.py)

Both create ``.venv`` in the repository if it is missing and (re)install the project into it with
``pip install -e ".[dev]"`` whenever pyproject.toml changed since the last install (a hash is kept in
``.venv/.dev-install-stamp``). Postgres and the LLM simulator need no setup: the tests start an
embedded Postgres under ``.pg/`` and the simulator in-process; set PGHOST (and PGPORT, PGUSER,
PGPASSWORD, PGDATABASE) to use your own Postgres instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".dev-install-stamp"
PYPROJECT = ROOT / "pyproject.toml"
NO_TESTS_COLLECTED = 5


def say(msg: str) -> None:
    print(f"dev.py: {msg}", flush=True)


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False


def _run_quiet(cmd: list[str], what: str) -> None:
    """Run cmd with its output captured; show the output only if it fails."""
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        say(f"{what} failed (exit code {proc.returncode}): {' '.join(cmd)}")
        sys.exit(proc.returncode or 1)


def ensure_venv() -> Path:
    python = venv_python()
    if VENV.exists() and not _works([str(python), "-c", "import sys"]):
        say(".venv is broken (its Python does not run); recreating it…")
        shutil.rmtree(VENV)
    if not VENV.exists():
        say(f"creating virtualenv in .venv (Python {sys.version.split()[0]})…")
        _run_quiet([sys.executable, "-m", "venv", str(VENV)], "creating the virtualenv")

    digest = hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()
    try:
        installed = STAMP.read_text().strip()
    except OSError:
        installed = ""
    if installed == digest:
        return python

    if not _works([str(python), "-m", "pip", "--version"]):
        say("bootstrapping pip into .venv…")
        _run_quiet([str(python), "-m", "ensurepip", "--upgrade"], "ensurepip")
    say('installing the project into .venv (pip install -e ".[dev]"; the first time takes a few minutes)…')
    _run_quiet(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-e", ".[dev]"],
        "pip install",
    )
    STAMP.write_text(digest + "\n")
    return python


def run(cmd: list[str]) -> int:
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the child got the SIGINT too: let it clean up (stop Postgres, …)
        try:
            return proc.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            proc.kill()
            return proc.wait()


def cmd_test(args: list[str]) -> int:
    python = ensure_venv()
    code = run([str(python), "-m", "pytest", "-q", *args])
    if code == NO_TESTS_COLLECTED:
        say("FAILED: pytest collected no tests (exit code 5); check the arguments or the tests/ folder")
    return code


def cmd_demo(args: list[str]) -> int:
    python = ensure_venv()
    return run([str(python), str(ROOT / "integration_tests" / "demo.py"), *args])


COMMANDS = {"test": cmd_test, "demo": cmd_demo}


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 10):
        print(f"dev.py needs Python >= 3.10 (this is {sys.version.split()[0]})", file=sys.stderr)
        return 2
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
