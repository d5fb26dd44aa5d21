"""The terminal dashboard (`zmqllm dash`): `run_dashboard` in `zmqllm.tui.app`.

Kept free of imports so `import zmqllm.tui` costs nothing until the dashboard runs.
"""
