"""The YOLO Inference API gateway: HTTP contract, letterbox, Triton over gRPC, NumPy post-processing."""
