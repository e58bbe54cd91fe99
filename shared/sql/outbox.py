"""The ``outbox`` table: one row per change, relayed by the notifier."""

# Wakes the relay; the payload is empty on purpose (a hint, not data).
CHANNEL = "dynconfig_outbox"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
