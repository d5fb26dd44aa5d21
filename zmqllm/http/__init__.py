"""The HTTP gateway: a daemon's OpenAI-compatible front door to the whole mesh (docs/design.md, "The HTTP gateway").

It runs in the daemon's own event loop and sees the node only through `host.Mesh`, so it never imports
`node/` (the node starts it: `node/daemon.py`).
"""
