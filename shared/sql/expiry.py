"""Expiry: keys past their deadline, claimed with SKIP LOCKED so replicas share the work."""

from shared.model import KEY_COLUMNS

# Due keys by Postgres's clock (the clock every writer uses), and that clock, for the expiry's time.
DUE = f"""
SELECT {KEY_COLUMNS}, statement_timestamp() FROM keys
 WHERE NOT deleted AND expires_at <= statement_timestamp()
 ORDER BY expires_at
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED
"""

# The next deadline, and how far away it is by Postgres's clock (negative: due already).
NEXT_DEADLINE = """
SELECT min(expires_at), extract(epoch FROM min(expires_at) - clock_timestamp())
  FROM keys WHERE NOT deleted AND expires_at IS NOT NULL
"""

# Sent by a write that sets a deadline, so a sleeping worker re-reads the next one.
CHANNEL = "dynconfig_ttl"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
