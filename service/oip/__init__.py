"""The Open Inference Protocol (KServe v2, as Triton speaks it) for the served model.

``wire``: the protocol's tensors as JSON and the binary tensor data extension (no model knowledge);
``contract``: this service's tensors (IMAGE / PIXELS in, LABELS / LABELS_PNG out) and the
metadata and model-configuration documents; ``models``: model name -> runtime, in one place;
``infer``: a request's images through the runtime's admission and dynamic batcher; ``http``: the
``/v2`` routes. Everything but ``http`` is transport-free, so a gRPC front can reuse it.
"""
