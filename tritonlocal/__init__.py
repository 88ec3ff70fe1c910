"""Run the real Triton server bundled in the `nvidia-pytriton` wheel as a plain process (dev, tests, `make serve`)."""
