"""One admitted prediction request, from its form to its answer: images (images.py: uploaded, in base64, or fetched
from a URL by fetch.py), videos (video.py: JSON or NDJSON), and the answers of both in both formats (responses.py)."""
