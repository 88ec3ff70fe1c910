"""Talking to Triton: the gRPC client with model metadata, inference and readiness (client.py), inference requests
over Triton's HTTP port (http.py), and tensors through its system shared memory (shm.py)."""
