"""zmqllm: a brokerless peer-to-peer mesh of LLM daemons."""

__version__ = "0.1.0"
