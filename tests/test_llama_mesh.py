"""Real inference through the mesh: llama daemons serving the bundled model.

Two daemons with one thread each (this machine has two cores), at most one of
them generating at a time except where a test says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, launch, private_env, run_cli, states, wait_until

from zmqllm.client import AsyncClient

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")

pytestmark = pytest.mark.llama
MODEL = "bundled:gemma3-270m"
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,"]
HEARTBEAT_S = 0.2


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llama-home")


@pytest.fixture(scope="module")
def mesh(home: Path) -> Iterator[tuple[Daemon, Daemon]]:
    env = private_env(home)
    llama = ("--model", MODEL, "--threads", "1")
    a = launch(env, "a", *llama, engine="llama", heartbeat=HEARTBEAT_S)
    try:
        b = launch(env, "b", *llama, "--peer", a.endpoint, engine="llama", heartbeat=HEARTBEAT_S)
    except BaseException:
        a.stop()
        raise
    try:
        wait_until(lambda: states(a) == {"a": "alive", "b": "alive"}, 10, what="llama mesh")
        yield a, b
    finally:
        b.stop()
        a.stop()


def _run(endpoint: str, prompt: str, **kwargs: object) -> list[dict]:
    async def go() -> list[dict]:
        async with AsyncClient(endpoint, timeout=30) as client:
            return [e async for e in client.submit(prompt, **kwargs)]

    return asyncio.run(go())


def test_greedy_through_the_mesh_equals_llama_cpp_called_directly(mesh, home):
    a, _ = mesh
    model_path = next((home / "cache" / "models").glob("*.gguf"))
    for prompt in PROMPTS:
        direct = llama_cpp.Llama(model_path=str(model_path), n_ctx=2048, n_threads=1, verbose=False)
        try:  # a fresh object per prompt: the high-level API reuses its cache across calls
            expected = direct.create_completion(prompt, max_tokens=32, temperature=0)["choices"][0]["text"]
        finally:
            direct.close()
        events = _run(a.endpoint, prompt, peer="b", max_tokens=32, params={"temperature": 0.0})
        done = events[-1]
        assert done["type"] == "done" and done["executed_by"] == "b", done
        assert done["text"] == expected
        tokens = [e for e in events if e["type"] == "token"]
        assert [t["seq"] for t in tokens] == list(range(len(tokens)))
        assert "".join(t["text"] for t in tokens) == expected and all(t["ids"] for t in tokens)
        assert done["usage"]["completion_tokens"] == 32 and done["finish_reason"] == "length"
        assert done["timings"]["decode_tok_s"] > 0 and done["timings"]["ttft_ms"] > 0


def test_same_seed_gives_the_same_text_from_different_origins(mesh):
    a, b = mesh
    params = {"temperature": 0.9, "top_p": 0.95, "seed": 1234}
    first = _run(a.endpoint, PROMPTS[1], max_tokens=24, params=params)[-1]
    second = _run(b.endpoint, PROMPTS[1], max_tokens=24, params=params)[-1]
    other_seed = _run(a.endpoint, PROMPTS[1], max_tokens=24, params={**params, "seed": 99})[-1]
    assert first["type"] == second["type"] == "done"
    assert first["text"] == second["text"]
    assert other_seed["text"] != first["text"]  # the seed is really used


def test_cancel_stops_a_long_generation_fast_and_frees_the_node(mesh):
    a, _ = mesh

    async def go() -> tuple[dict, float, float]:
        async with AsyncClient(a.endpoint, timeout=30) as client:
            stream = client.submit(PROMPTS[1], peer="b", max_tokens=2000, params={"temperature": 0.0})
            tokens = 0
            cancelled_at = 0.0
            async for event in stream:
                if event["type"] == "token":
                    tokens += 1
                    if tokens == 5:
                        cancelled_at = time.monotonic()
                        await client.cancel(event["task_id"])
                elif event["type"] in ("done", "error"):
                    ended = time.monotonic() - cancelled_at
                    break
            final = event
            started = time.monotonic()
            async for event in client.submit("Hello", peer="b", max_tokens=2, params={"temperature": 0.0}):
                if event["type"] == "token":
                    break
            return final, ended, time.monotonic() - started

    final, took, next_first_token = asyncio.run(go())
    assert final["type"] == "done" and final["finish_reason"] == "cancelled", final
    assert took < 1.0, f"cancel took {took:.2f}s"
    assert next_first_token < 1.0, f"the next task waited {next_first_token:.2f}s for its first token"


def test_heartbeats_keep_arriving_while_a_node_generates(mesh):
    a, b = mesh

    async def go() -> tuple[float, set[str], dict]:
        async with AsyncClient(a.endpoint, timeout=30) as watcher, AsyncClient(a.endpoint, timeout=60) as client:
            task = asyncio.create_task(_collect(client.submit(PROMPTS[0], peer="b", max_tokens=256,
                                                              params={"temperature": 0.0})))
            worst, seen = 0.0, set()
            while not task.done():
                row = next(r for r in await watcher.peers() if r["name"] == "b")
                worst, seen = max(worst, row["heartbeat_age_s"]), seen | {row["state"]}
                await asyncio.sleep(0.02)
            return worst, seen, (await task)[-1]

    worst, seen, done = asyncio.run(go())
    assert done["type"] == "done" and done["usage"]["completion_tokens"] == 256
    assert seen == {"alive"}
    # a heartbeat every 0.2 s: the last one heard is never older than an interval plus scheduling slack
    assert worst < HEARTBEAT_S * 1.5, f"heartbeat age reached {worst:.3f}s"


async def _collect(stream) -> list[dict]:
    return [e async for e in stream]


def test_bad_model_path_and_non_gguf_file_fail_with_one_clear_line(tmp_path, home):
    env = private_env(home)
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("these are not weights\n")
    for model, expected in [(str(tmp_path / "missing.gguf"), "does not exist"), (str(text_file), "not a GGUF file")]:
        result = run_cli(env, "daemon", "--name", "bad", "--bind", "tcp://127.0.0.1:0", "--engine", "llama",
                         "--model", model, "--log-level", "error", timeout=60)
        assert result.returncode == 2, result  # bad configuration, found before anything starts
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and expected in errors[0] and model in errors[0], result.stderr
        assert "Traceback" not in result.stderr


def test_chat_on_the_bundled_model_is_its_plain_template_rendered_as_a_completion(mesh):
    from zmqllm.core.chat import PLAIN_STOPS, render_plain

    a, _ = mesh
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "What is the capital of France?"}]

    async def go() -> tuple[dict, dict]:
        async with AsyncClient(a.endpoint, timeout=30) as client:
            chat = [e async for e in client.chat(messages, max_tokens=24, params={"temperature": 0.0})][-1]
            same = [e async for e in client.submit(render_plain(messages), max_tokens=24, stop=PLAIN_STOPS,
                                                   params={"temperature": 0.0})][-1]
            return chat, same

    chat, same = asyncio.run(go())
    assert chat["type"] == "done" and chat["text"].strip(), chat
    assert chat["text"] == same["text"] and chat["finish_reason"] == same["finish_reason"]


def test_chat_to_a_model_without_a_template_is_one_clear_error(mesh, home):
    a, _ = mesh
    env = private_env(home)
    model_path = next((home / "cache" / "models").glob("*.gguf"))  # the same weights, served by path: no template
    raw = launch(env, "raw", "--model", str(model_path), "--threads", "1", "--peer", a.endpoint, engine="llama",
                 heartbeat=HEARTBEAT_S)
    try:
        wait_until(lambda: states(a).get("raw") == "alive", 10, what="raw to join")
        result = run_cli(env, "chat", "Hello", "--peer", "raw", "--connect", a.endpoint, "--model",
                         model_path.stem, timeout=60)
        assert result.returncode == 1, result
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "bad_request" in errors[0] and "no chat template" in errors[0], result.stderr
        # the same node still serves completions
        result = run_cli(env, "submit", "Hello", "--peer", "raw", "--connect", a.endpoint, "--model",
                         model_path.stem, "--max-tokens", "4", "--json", timeout=60)
        assert result.returncode == 0 and json.loads(result.stdout.splitlines()[-1])["type"] == "done"
        models = json.loads(run_cli(env, "models", "--json", "--connect", a.endpoint).stdout)
        by_name = {m["model"]: m for m in models}
        assert by_name["gemma3-270m"]["chat"] is True and by_name[model_path.stem]["chat"] is False
        assert by_name["gemma3-270m"]["peers"] == ["a", "b"] and by_name["gemma3-270m"]["ctx"] == 2048
    finally:
        raw.stop()


def test_a_jinja_chat_template_file_is_used_for_chat(mesh, home, tmp_path):
    a, _ = mesh
    env = private_env(home)
    template = tmp_path / "turns.jinja"
    template.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]")
    model_path = next((home / "cache" / "models").glob("*.gguf"))
    node = launch(env, "tpl", "--model", str(model_path), "--model-name", "tpl-model", "--chat-format", str(template),
                  "--threads", "1", "--peer", a.endpoint, engine="llama", heartbeat=HEARTBEAT_S)
    try:
        wait_until(lambda: states(a).get("tpl") == "alive", 10, what="tpl to join")
        messages = [{"role": "user", "content": "Name a colour."}]

        async def go() -> tuple[dict, dict]:
            async with AsyncClient(a.endpoint, timeout=30) as client:
                chat = [e async for e in client.chat(messages, model="tpl-model", max_tokens=12,
                                                     params={"temperature": 0.0})][-1]
                plain = [e async for e in client.submit("[user] Name a colour.\n[assistant]", model="tpl-model",
                                                        max_tokens=12, stop=["<eos>"],
                                                        params={"temperature": 0.0})][-1]
                return chat, plain

        chat, plain = asyncio.run(go())
        assert chat["type"] == "done" and chat["executed_by"] == "tpl"
        assert chat["text"] == plain["text"]
    finally:
        node.stop()


def test_greedy_failover_mid_stream_gives_the_uninterrupted_text(home):
    """SIGKILL the executing llama daemon mid-stream: the task resumes on the other
    one, which replays the delivered tokens, and the text equals an uninterrupted run."""
    import signal

    env = private_env(home)
    llama = ("--model", MODEL, "--threads", "1")
    a = launch(env, "fa", *llama, engine="llama", heartbeat=HEARTBEAT_S)
    b = launch(env, "fb", *llama, "--peer", a.endpoint, engine="llama", heartbeat=HEARTBEAT_S)
    try:
        wait_until(lambda: states(a) == {"fa": "alive", "fb": "alive"}, 10, what="mesh")
        prompt, params = PROMPTS[1], {"temperature": 0.0}
        reference = _run(a.endpoint, prompt, peer="fb", max_tokens=48, params=params)[-1]["text"]

        async def interrupted() -> list[dict]:
            events = []
            async with AsyncClient(a.endpoint, timeout=30) as client:
                async for event in client.submit(prompt, peer="fb", max_tokens=48, params=params):
                    events.append(event)
                    if event["type"] == "token" and event["seq"] == 15:
                        b.proc.send_signal(signal.SIGKILL)
            return events

        events = asyncio.run(interrupted())
        done = events[-1]
        assert [e["to"] for e in events if e["type"] == "failover"] == ["fa"]
        assert done["type"] == "done" and done["executed_on"] == ["fb", "fa"], done
        assert done["text"] == reference
        seqs = [e["seq"] for e in events if e["type"] == "token"]
        assert seqs == list(range(len(seqs))) and len(seqs) > 16
    finally:
        b.stop()
        a.stop()
