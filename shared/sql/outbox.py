"""The ``outbox`` table: one row per change, relayed by the notifier."""

INSERT = """
INSERT INTO outbox (key, version, event, at) VALUES (%(key)s, %(version)s, %(event)s, %(now)s)
"""

# Wakes the relay; the payload is empty on purpose (a hint, not data).
NOTIFY = "SELECT pg_notify('dynconfig_outbox', '')"
