"""The model repository: what to serve (``specs``), whether it fits (``capacity``), and the served
models with their load/unload (``registry``)."""
