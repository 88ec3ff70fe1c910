"""Video jobs: a video analysed apart from any connection, by the replica holding its lease (service.py, run.py)."""
