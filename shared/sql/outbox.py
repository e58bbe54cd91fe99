"""The ``outbox`` table: one row per change, relayed by the notifier."""

# Wakes the relay; the payload is empty on purpose (a hint, not data).
NOTIFY = "SELECT pg_notify('dynconfig_outbox', '')"
