"""DeepLabV3+ segmentation service: FastAPI app, dynamic batcher, pluggable inference backends."""
