"""The ``audit_log`` table."""

COLUMNS = ("at", "actor", "action", "key", "version", "outcome", "request_id")

INSERT = """
INSERT INTO audit_log (at, actor, action, key, version, outcome, request_id)
VALUES (%(at)s, %(actor)s, %(action)s, %(key)s, %(version)s, %(outcome)s, %(request_id)s)
"""

# A batch in one statement: one array per column, rows in order (ids follow the array order).
INSERT_MANY = """
INSERT INTO audit_log (at, actor, action, key, version, outcome, request_id)
SELECT * FROM unnest(%(at)s::timestamptz[], %(actor)s::text[], %(action)s::text[], %(key)s::text[],
                     %(version)s::bigint[], %(outcome)s::text[], %(request_id)s::text[])
"""

# Newest first by time, then id; each filter is skipped when its parameter is NULL. The cursor is the
# (at, id) of the last record of the previous page.
PAGE = """
SELECT id, at, actor, action, key, version, outcome, request_id FROM audit_log
 WHERE (%(key)s::text IS NULL OR key = %(key)s)
   AND (%(actor)s::text IS NULL OR actor = %(actor)s)
   AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
   AND (%(before_at)s::timestamptz IS NULL OR (at, id) < (%(before_at)s, %(before_id)s::bigint))
 ORDER BY at DESC, id DESC
 LIMIT %(limit)s
"""
