"""Pixels and arrays, in pure functions run in worker threads: decode and letterbox (preprocess.py), raw outputs to
rows (postprocess.py, masks.py, obb.py), both steps for one image (pipeline.py), annotated images (render.py), and
videos: their files (videofile.py), frames (videoreader.py) and the frame sizes their packets declare
(video_headers.py)."""
