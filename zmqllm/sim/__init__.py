"""Simulators: the pure protocols of `zmqllm.core` driven by a simulated clock and network, at sizes and fault
rates a real mesh on one machine cannot reach (`zmqllm sim ...`)."""
