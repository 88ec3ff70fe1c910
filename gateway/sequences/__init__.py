"""Tracking across requests: each `sequence`'s tracker state, kept between the frames a client posts one at a time,
shared by every gateway replica in Redis mode (store.py: the interface and the in-process store; redis_store.py).

The stores hold bytes (gateway/tracking/codec.py writes them) and a frame counter per (API key, sequence); they know
nothing of the tracker itself.
"""

from __future__ import annotations

from gateway.sequences.store import MemorySequences, Sequences, Stored
from gateway.settings import Settings

__all__ = ["MemorySequences", "Sequences", "Stored", "open_sequences"]


def open_sequences(settings: Settings) -> Sequences:
    """Redis when GATEWAY_REDIS_URL is set, else the in-process store."""
    if settings.redis_url:
        from gateway.sequences.redis_store import RedisSequences

        return RedisSequences.from_settings(settings)
    return MemorySequences(settings.sequence_ttl_s, settings.max_sequences_per_key)
