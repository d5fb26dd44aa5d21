"""Where `zmqllm bench concurrency` gets its llama-server baseline, and why it
says it has none. (The build itself takes minutes; it is run by the benchmark,
not by the suite.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from zmqllm.bench import llama_server
from zmqllm.bench.concurrency import pick_server

pytest.importorskip("llama_cpp")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZMQLLM_HOME", str(tmp_path))
    return tmp_path


def test_a_given_binary_is_used_as_is(home: Path) -> None:
    assert pick_server("/opt/llama-server", build=True, progress=print) == ("/opt/llama-server", "")


def test_the_cached_build_is_found_per_llama_cpp_python_version(home: Path) -> None:
    cached = llama_server.cached_binary()
    assert cached.is_relative_to(home) and cached.parent.name.startswith(llama_server.llama_cpp_version())
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert pick_server(None, build=False, progress=print) == (str(cached), "")


def test_without_a_build_it_says_why(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_server(None, build=False, progress=print) == (None, "not built yet and --no-build given")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    steps: list[str] = []
    assert pick_server(None, build=True, progress=steps.append) == (
        None, "building llama-server needs cmake and c++ on PATH")
    assert steps == []  # nothing was downloaded


def test_a_build_step_passes_on_progress_and_fails_with_its_last_lines(tmp_path: Path) -> None:
    steps: list[str] = []
    script = "for p in 3 12 15 25 100; do echo \"[ $p%] Building x\"; done"
    llama_server._run(["sh", "-c", script], tmp_path, "building", steps.append)
    assert steps == ["building: 12 %", "building: 25 %", "building: 100 %"]
    with pytest.raises(llama_server.BuildError) as err:
        llama_server._run(["sh", "-c", "echo one; echo two; echo three; echo four >&2; exit 3"], tmp_path, "cmake")
    assert str(err.value) == "cmake failed (exit 3): two | three | four"


def test_cmake_args_get_a_build_of_their_own(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMAKE_ARGS", "")  # set, even empty: no portable default on a CPU advertising AMX
    cpu = llama_server.cached_binary()
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on")
    cuda = llama_server.cached_binary()
    assert cuda != cpu and cuda.parent.name.startswith(cpu.parent.name + "-")


def test_the_baseline_builds_portable_where_the_cpu_advertises_amx(tmp_path, monkeypatch):
    from zmqllm.bench.llama_server import PORTABLE_ARGS, _cmake_args

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    plain.write_text("flags\t\t: fpu avx2\n")
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    assert _cmake_args(amx) == PORTABLE_ARGS.split() and _cmake_args(plain) == []
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on")
    assert _cmake_args(amx) == ["-DGGML_CUDA=on"]  # what the user asks for wins
