"""GPU-host benchmark without TensorRT: onnx2torch on CUDA inside Triton's python backend (see README.md)."""
