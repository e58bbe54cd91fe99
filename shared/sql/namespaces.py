"""The ``namespaces`` table: namespace ACLs for inheritance."""

SELECT_ALL = "SELECT namespace, acl_read, acl_write FROM namespaces"

SELECT_MANY = "SELECT namespace, acl_read, acl_write FROM namespaces WHERE namespace = ANY(%(namespaces)s)"

# The same, with the time of the change in one round trip: run by a writer once it holds the key's row
# lock, so the clock is read after any wait for that lock (Postgres's clock, the same for every replica).
SELECT_MANY_AND_NOW = """
SELECT clock_timestamp(),
       coalesce(json_agg(json_build_array(namespace, acl_read, acl_write)), '[]')
  FROM namespaces WHERE namespace = ANY(%(namespaces)s)
"""

SELECT_ONE = "SELECT namespace, acl_read, acl_write, updated_by, updated_at FROM namespaces WHERE namespace = %(ns)s"

UPSERT = """
INSERT INTO namespaces (namespace, acl_read, acl_write, updated_by, updated_at)
VALUES (%(ns)s, %(read)s, %(write)s, %(actor)s, %(now)s)
ON CONFLICT (namespace) DO UPDATE
   SET acl_read = EXCLUDED.acl_read, acl_write = EXCLUDED.acl_write,
       updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at
RETURNING (xmax = 0) AS created
"""

DELETE = "DELETE FROM namespaces WHERE namespace = %(ns)s"

# Tells notifiers to reload namespace ACLs (watch deliveries check them per event).
CHANNEL = "dynconfig_namespaces"
# The payload names the write (a token of the writer's), so its process can wait until its own
# listener has heard it (shared.nsacls.NamespaceAcls.wait_heard).
NOTIFY = f"SELECT pg_notify('{CHANNEL}', %(token)s)"
