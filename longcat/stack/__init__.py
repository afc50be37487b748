"""The local stack behind ``longcat up``: Redis and every service as supervised child processes.

- ``plan``: which services, with which flags, ports and paths, from the options (pure data)
- ``redis_local``: find the Redis at the URL, or run a private ``redis-server``
- ``supervisor``: start, health-check, restart with backoff, stop in tiers
- ``local``: the whole sequence (checks, lock, model, start, run, stop)
"""
