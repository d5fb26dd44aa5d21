"""`python -m zmqllm` is the `zmqllm` command."""

from zmqllm.cli import main

main()
