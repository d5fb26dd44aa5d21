"""The Python client of a zmqllm mesh: what the CLI, the dashboard, the benchmarks and user programs use.

    from zmqllm.client import Client
    with Client("tcp://127.0.0.1:5555") as mesh:
        print(mesh.peers())
"""

from zmqllm.client.connection import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    AsyncClient,
    Client,
    MeshUnreachable,
    RequestFailed,
    event_from,
)

__all__ = ["DEFAULT_MAX_TOKENS", "DEFAULT_TIMEOUT_S", "AsyncClient", "Client", "MeshUnreachable", "RequestFailed",
           "event_from"]
