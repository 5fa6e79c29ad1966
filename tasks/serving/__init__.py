"""Serving a GGUF: the local llama-cpp-python server and the checks every server must pass."""
