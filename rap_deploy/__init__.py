"""rapdeploy: RAP text-video retrieval from PyTorch training to deployed ONNX Runtime / TensorRT engines."""

__version__ = "0.1.0"
