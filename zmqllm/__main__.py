"""`python -m zmqllm` is the `zmqllm` command."""

from zmqllm.cli.main import main

main()
