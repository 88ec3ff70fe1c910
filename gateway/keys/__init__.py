"""API keys, rate limits and usage: the keys file and its checks (auth.py), GCRA limits and per-key slots
(ratelimit.py), usage counters (usage.py), the store behind one interface (store.py: the keys file, or Redis in
redis_store.py), and the `python -m gateway.keys` command line (cli.py)."""
