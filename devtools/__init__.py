"""Local development and test helpers: throwaway Postgres/Redis servers, dev keys, ``./dev/up``.

Nothing here is used by the production processes.
"""
