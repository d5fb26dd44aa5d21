"""Plain-text renderings of listings for terminals (the JSON forms are the data)."""

from __future__ import annotations

from typing import Any


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def peer_table(rows: list[dict[str, Any]]) -> str:
    """`zmqllm peers`: this node marked with *."""
    body = [
        [
            ("*" if r["self"] else " ") + r["name"],
            r["state"],
            r["endpoint"],
            _models(r),
            f"{r['slots']['busy']}/{r['slots']['total']}",
            str(r["queued"]),
            f"{r['tok_s']:.1f}",
            "-" if r.get("cache_hit") is None else f"{r['cache_hit']:.0%}",
            f"{r['heartbeat_age_s']:.1f}s",
        ]
        for r in rows
    ]
    return table(["NAME", "STATE", "ENDPOINT", "MODELS", "SLOTS", "QUEUED", "TOK/S", "CACHE HIT", "HEARD"], body)


def _models(row: dict[str, Any]) -> str:
    """Loaded models as they are, one loading marked '(loading)', one not loaded in brackets."""
    loaded, loading = row.get("loaded", row["models"]), row.get("loading", ())
    return ",".join(f"{m} (loading)" if m in loading else m if m in loaded else f"[{m}]" for m in row["models"])


def status_lines(info: dict[str, Any]) -> str:
    """`zmqllm status`: one `key: value` per line."""
    tasks = info["tasks"]
    peers = info["peers"]
    return "\n".join(
        [
            f"name:      {info['name']} ({info['node_id']})",
            f"endpoint:  {info['endpoint']}",
            f"models:    {', '.join(info['models'])} ({info['slots']} slots)",
            f"uptime:    {info['uptime_s']:.1f}s",
            f"tasks:     {tasks['running']} running, {tasks['queued']} queued, {tasks['done']} done, "
            f"{tasks['routing']} in flight as origin",
            "peers:     " + ", ".join(f"{n} {state}" for state, n in peers.items() if n) if any(peers.values())
            else "peers:     none",
            f"links:     {info['links']} ({info.get('membership', 'heartbeat')} membership)" if "links" in info
            else "links:     -",
            f"version:   {info['version']} (protocol {info['protocol_version']})",
        ]
    )


def model_rows(peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`zmqllm models`: one row per model name, from the peer listing (live nodes only)."""
    models: dict[str, dict[str, Any]] = {}
    for peer in peers:
        if peer["state"] not in ("alive", "suspect"):
            continue
        for name in peer["models"]:
            row = models.setdefault(name, {"model": name, "peers": [], "loaded_on": [], "loading_on": [], "ctx": 0,
                                           "slots": 0, "busy": 0, "chat": False})
            row["peers"].append(peer["name"])
            if name in peer.get("loaded", peer["models"]):
                row["loaded_on"].append(peer["name"])
            if name in peer.get("loading", ()):
                row["loading_on"].append(peer["name"])
            row["slots"] += peer["slots"]["total"]
            row["busy"] += peer["slots"]["busy"]
            row["chat"] = row["chat"] or bool(peer.get("chat"))
            ctx = peer.get("ctx", 0)
            if ctx and (not row["ctx"] or ctx < row["ctx"]):
                row["ctx"] = ctx  # the smallest context any serving node offers
    return sorted(models.values(), key=lambda r: r["model"])


def model_table(rows: list[dict[str, Any]]) -> str:
    def loaded(row: dict[str, Any]) -> str:
        names = row["loaded_on"] + [f"{name} (loading)" for name in row["loading_on"]]
        return ",".join(names) or "-"

    body = [[r["model"], ",".join(r["peers"]), loaded(r), str(r["ctx"] or "-"), f"{r['busy']}/{r['slots']}",
             "yes" if r["chat"] else "no"] for r in rows]
    return table(["MODEL", "SERVED BY", "LOADED ON", "CTX PER SLOT", "SLOTS", "CHAT"], body)


def task_table(rows: list[dict[str, Any]]) -> str:
    """`zmqllm tasks`: newest first."""
    def ending(row: dict[str, Any]) -> str:
        if "error" in row:
            return row["error"]["code"]
        return row.get("finish_reason") or ""

    body = [[r["task_id"], r["state"], ending(r), ",".join(r.get("executed_on") or []) or (r.get("executor") or "-"),
             str(r["tokens"]), f"{r['elapsed_s']:.1f}s"] for r in rows]
    return table(["TASK", "STATE", "END", "EXECUTED ON", "TOKENS", "ELAPSED"], body)


def run_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no workflow runs"
    return table(["run", "workflow", "state", "orchestrator", "tasks done", "elapsed", "error"],
                 [[r["run_id"], r["workflow"], r["state"], r.get("orchestrator") or "", str(r.get("tasks_done", "")),
                   f"{r.get('elapsed_s', 0):.1f}s", (r.get("error") or "")[:60]] for r in rows])
