"""Expiry: keys past their deadline, claimed with SKIP LOCKED so replicas share the work."""

from shared.model import KEY_COLUMNS

DUE = f"""
SELECT {KEY_COLUMNS} FROM keys
 WHERE NOT deleted AND expires_at <= %(now)s
 ORDER BY expires_at
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED
"""

NEXT_DEADLINE = "SELECT min(expires_at) FROM keys WHERE NOT deleted AND expires_at IS NOT NULL"

# Sent by a write that sets a deadline, so a sleeping worker re-reads the next one.
NOTIFY = "SELECT pg_notify('dynconfig_ttl', '')"
