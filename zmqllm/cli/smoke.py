"""`python -m zmqllm.cli.smoke`: does this llama-cpp-python build run the bundled model here?

A build compiled for the CPU it runs on (llama.cpp's default) can still crash on it: a virtual machine may
advertise AMX tiles its hypervisor does not let a process use, and llama.cpp's first matrix product then
dies of a general protection fault. `bin/setup` runs this once after installing and, when the process dies,
rebuilds llama-cpp-python without CPU-specific extensions (exit 0: fine; death by a signal: broken build).
"""

from __future__ import annotations

import sys


def main() -> int:
    from zmqllm.engines.bundled import resolve_model_path
    from zmqllm.engines.llama_api import import_llama_cpp
    from zmqllm.node.paths import cache_dir

    llama_cpp = import_llama_cpp()
    model = resolve_model_path("bundled:gemma3-270m", cache_dir() / "models")  # where daemons find it too
    llm = llama_cpp.Llama(str(model), n_ctx=64, n_threads=1, verbose=False)
    llm.create_completion("Once", max_tokens=2, temperature=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
