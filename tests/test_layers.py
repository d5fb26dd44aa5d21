"""The package's layers import one way (docs/design.md): a newcomer can trust a folder's name for what it may use."""

from __future__ import annotations

import ast
from pathlib import Path

import zmqllm

PACKAGE = Path(zmqllm.__file__).parent

MAY_IMPORT: dict[str, set[str]] = {
    "core": {"core"},
    "net": {"core", "net"},
    "engines": {"core", "engines"},
    "workflow": {"core", "workflow"},
    "client": {"core", "net", "client"},
    "http": {"core", "http"},
    "node": {"core", "net", "engines", "workflow", "http", "node"},
    "tui": {"core", "client", "workflow", "tui"},
    "sim": {"core", "sim"},
    "bench": {"core", "net", "engines", "workflow", "client", "http", "node", "tui", "bench"},
    "cli": {"core", "net", "engines", "workflow", "client", "http", "node", "tui", "bench", "sim", "cli"},
}
"""Each layer and the layers it may import (itself included); `zmqllm` itself (the version) is open to all."""

PURE_FORBIDDEN = {"zmq", "asyncio", "sqlite3", "llama_cpp", "socket", "threading"}
"""What `core/` never imports: it takes values and a clock and returns decisions."""


def _imports(path: Path) -> list[str]:
    """Every module name a file imports, at any depth (function-level imports included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "zmqllm":
                names += [f"zmqllm.{alias.name}" for alias in node.names]
    return names


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "zmqllm" else None


def test_every_module_lives_in_a_layer() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == [], f"modules outside a layer folder: {loose}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(MAY_IMPORT)


def test_imports_run_one_way() -> None:
    wrong = []
    for layer, allowed in MAY_IMPORT.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for name in _imports(path):
                target = _layer_of(name)
                if name.startswith("zmqllm") and target is not None and target not in allowed and target != "__version__":
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert wrong == []


def test_core_is_pure() -> None:
    wrong = [f"{path.relative_to(PACKAGE)} imports {name}"
             for path in sorted((PACKAGE / "core").rglob("*.py"))
             for name in _imports(path) if name.split(".")[0] in PURE_FORBIDDEN]
    assert wrong == []


ADAPTERS = {"textual": "tui/textual_api.py", "llama_cpp": "engines/llama_api.py"}
"""The one module through which each library's private or low-level API is used."""


def test_private_apis_of_textual_and_llama_cpp_are_used_in_one_adapter_each() -> None:
    """`textual._*` modules, and llama-cpp-python below its public `Llama` class (the `llama_cpp.llama_*` C
    functions, `Llama`'s private members), appear only in their adapter, so an upgrade touches one file."""
    import re

    private = {"textual": re.compile(r"\btextual\._\w+"),
               "llama_cpp": re.compile(r"\bllama_cpp\.llama_\w+\(|\bllama_cpp\.llama_cpp\b|\b_?llm\._(model|ctx|batch)\b")}
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for library, pattern in private.items():
            if str(path.relative_to(PACKAGE)) != ADAPTERS[library] and pattern.search(text):
                wrong.append(f"{path.relative_to(PACKAGE)} uses {library} internals: {pattern.search(text).group(0)}")
    assert wrong == []
