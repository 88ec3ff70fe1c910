"""Export YOLO weights into a Triton model repository (`python -m export --help`)."""
