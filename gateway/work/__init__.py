"""Leased work in the shared state: the board (records, leases with fencing tokens, channels; memory or
Redis), the owner loop that claims and renews, the URL guard for sources and webhooks, webhook signing and delivery."""
