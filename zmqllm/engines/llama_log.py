"""llama.cpp's log lines, routed into Python `logging`.

With verbose=False, llama-cpp-python 0.3.36 silences model loading by dup2()-ing
file descriptors 1 and 2 to /dev/null and swapping sys.stdout/sys.stderr,
process-wide, for the whole load: anything the daemon logs meanwhile, from any
thread, is lost. So for verbose=False we replace that context manager with a
no-op and route llama.cpp's log callback into the `zmqllm.llama_cpp` logger
instead (the daemon's logging config decides what shows); ERROR lines logged
during a failed load go into the EngineError message (`collect_load_errors`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from zmqllm.engines.llama_api import replace_output_suppression, route_logs

cpp_log = logging.getLogger("zmqllm.llama_cpp")  # llama.cpp's own log lines

# ggml_log_level as llama.cpp in 0.3.36 sends it: NONE 0, DEBUG 1, INFO 2, WARN 3,
# ERROR 4, CONT 5 (llama_cpp._logger still maps the older enum: it shows WARN lines
# as errors and hides real ERROR lines as debug).
# llama.cpp's INFO is a page of model metadata per load: shown with --log-level debug.
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG,
               3: logging.WARNING, 4: logging.ERROR}
_log_lock = threading.Lock()
_log_installed = False
_log_callback: Any = None  # keeps the ctypes callback alive
_load_errors: list[str] | None = None  # collects ERROR lines during a load


class _NoSuppress:
    def __init__(self, disable: bool = True) -> None:
        pass

    def __enter__(self) -> _NoSuppress:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def install_quiet_logging(llama_cpp: Any) -> None:
    """Route llama.cpp's log callback into `cpp_log` and stop llama-cpp-python
    from redirecting stdout/stderr while loading; once per process."""
    global _log_installed, _log_callback
    with _log_lock:
        if _log_installed:
            return
        last = [logging.DEBUG]

        def on_log(level: int, text: bytes, _user: Any) -> None:
            try:
                lvl = last[0] if level == 5 else _LOG_LEVELS.get(level, logging.INFO)
                last[0] = lvl
                line = text.decode("utf-8", "replace").rstrip()
                if not line.strip(". "):  # progress dots
                    return
                if lvl >= logging.ERROR and _load_errors is not None:
                    _load_errors.append(line)
                cpp_log.log(lvl, "%s", line)
            except Exception:  # never raise into C
                pass

        _log_callback = route_logs(on_log)
        replace_output_suppression(_NoSuppress)
        _log_installed = True


@contextlib.contextmanager
def collect_load_errors() -> Iterator[list[str]]:
    """While the block runs (one model load), the ERROR lines llama.cpp logs
    are appended to the list it is given (with quiet logging installed)."""
    global _load_errors
    errors: list[str] = []
    _load_errors = errors
    try:
        yield errors
    finally:
        _load_errors = None


__all__ = ["collect_load_errors", "cpp_log", "install_quiet_logging"]
