"""Long videos as jobs: a video stored in the shared state, analysed by whichever replica holds its lease, its
result kept for a set time (service.py)."""
