"""llama.cpp's own `llama-server`, built once from the sources vendored in the
installed llama-cpp-python's sdist, as the same-run baseline of `zmqllm bench
concurrency`.

Building from that sdist (not any llama.cpp checkout) keeps the baseline on the
very kernels zmqllm runs: same version, same compiler, same CPU flags, and
shared ggml/llama libraries as llama-cpp-python has them (a static build ran
≈ 3 % slower at 4 streams on the dev machine, which would flatter zmqllm).
`CMAKE_ARGS` is passed on, as llama-cpp-python's build takes it. The binary and
its libraries (found through an `$ORIGIN` rpath) are cached under
`paths.cache_dir()/llama-server/VERSION[-HASH of CMAKE_ARGS]/`, so only the
first benchmark run pays the build (≈ 4 min on the 2-core dev machine). Tests,
examples and the web UI are off: the UI's build step would try to download it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

from zmqllm.node import paths

CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_CURL=OFF")
TOOLS = ("cmake", "c++")
_PERCENT = re.compile(r"\[\s*(\d+)%\]")


class BuildError(Exception):
    """llama-server could not be built; the message says why in one line."""


def llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError("llama-cpp-python is not installed") from None


PORTABLE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON "
                 "-DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON")
"""What bin/setup builds llama-cpp-python with on a CPU that advertises AMX: some virtual machines advertise it
and trap its instructions (a native build dies with SIGILL), and the baseline must run the same kernels."""


def _cmake_args(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """CMAKE_ARGS as llama-cpp-python's own build takes it (e.g. "-DGGML_CUDA=on" for a GPU baseline); unset,
    the portable flags where the CPU advertises AMX, as bin/setup does."""
    given = os.environ.get("CMAKE_ARGS")
    if given is None:
        try:
            advertises_amx = "amx_tile" in cpuinfo.read_text().split()
        except OSError:
            advertises_amx = False
        given = PORTABLE_ARGS if advertises_amx else ""
    return shlex.split(given)


def cached_binary(version: str | None = None) -> Path:
    """Where the build for `version` (default: the installed one) and the
    current CMAKE_ARGS lives: a CUDA build does not stand in for a CPU one."""
    name = version or llama_cpp_version()
    extra = _cmake_args()
    if extra:
        name += "-" + hashlib.sha256(" ".join(extra).encode()).hexdigest()[:8]
    return paths.cache_dir() / "llama-server" / name / "llama-server"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _run(command: list[str], cwd: Path, what: str, progress: Callable[[str], None] | None = None) -> None:
    """Run a build step; with `progress`, pass on cmake's percentage every 10 points."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=3)
    shown = 0
    with proc:
        for line in proc.stdout:
            tail.append(line.strip())
            percent = _PERCENT.match(line)
            if progress is not None and percent and int(percent.group(1)) >= shown + 10:
                shown = int(percent.group(1))
                progress(f"{what}: {shown} %")
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")


def build(progress: Callable[[str], None], jobs: int = 2) -> Path:
    """The cached llama-server for the installed llama-cpp-python, built first
    when absent: `pip download` of the sdist, then cmake. Raises `BuildError`."""
    version = llama_cpp_version()
    target = cached_binary()
    if target.is_file():
        return target
    missing = missing_tools()
    if missing:
        raise BuildError(f"building llama-server needs {' and '.join(missing)} on PATH")
    with tempfile.TemporaryDirectory(prefix="zmqllm-llama-server-") as tmp:
        work = Path(tmp)
        progress(f"downloading the llama-cpp-python {version} sdist")
        _run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps",
              "--no-binary", ":all:", "-q", "-d", str(work)], work, "pip download")
        archives = list(work.glob("llama_cpp_python-*.tar.gz"))
        if not archives:
            raise BuildError(f"pip download left no llama_cpp_python-{version}.tar.gz")
        with tarfile.open(archives[0]) as archive:
            if hasattr(tarfile, "data_filter"):  # 3.11.4+: refuse links and paths out of `work`
                archive.extractall(work, filter="data")
            else:
                archive.extractall(work)
        source = work / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
        if not (source / "CMakeLists.txt").is_file():
            raise BuildError(f"the sdist has no vendored llama.cpp at {source.relative_to(work)}")
        progress(f"building llama-server from its vendored llama.cpp with {jobs} jobs "
                 "(once; several minutes on 2 cores)")
        _run(["cmake", "-B", "build", *CMAKE_FLAGS, *_cmake_args()], source, "cmake configure")
        _run(["cmake", "--build", "build", "--target", "llama-server", "-j", str(jobs)], source, "building",
             progress)
        built = source / "build" / "bin"
        if not (built / "llama-server").is_file():
            raise BuildError("the build finished without build/bin/llama-server")
        staging = target.parent.with_name(target.parent.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(built, staging, symlinks=True,
                        ignore=lambda _, names: [n for n in names if n != "llama-server" and ".so" not in n])
        shutil.rmtree(target.parent, ignore_errors=True)
        staging.rename(target.parent)  # a killed copy never looks like a finished build
    progress(f"llama-server cached at {target}")
    return target


__all__ = ["BuildError", "build", "cached_binary", "llama_cpp_version", "missing_tools"]
