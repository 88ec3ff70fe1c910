"""Live streams: sources read in their own threads, newest frame wins, analysed by the replica that holds the
stream's lease, results to Server-Sent Events and webhooks (service.py, stream.py, source.py, request.py);
tracking through gateway/predict/tracked.py, as a video's frames."""
