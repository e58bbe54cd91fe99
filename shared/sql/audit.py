"""The ``audit_log`` table."""

INSERT = """
INSERT INTO audit_log (at, actor, action, key, version, outcome, request_id)
VALUES (%(at)s, %(actor)s, %(action)s, %(key)s, %(version)s, %(outcome)s, %(request_id)s)
"""

# Newest first; each filter is skipped when its parameter is NULL.
PAGE = """
SELECT id, at, actor, action, key, version, outcome, request_id FROM audit_log
 WHERE (%(key)s::text IS NULL OR key = %(key)s)
   AND (%(actor)s::text IS NULL OR actor = %(actor)s)
   AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
   AND (%(before)s::bigint IS NULL OR id < %(before)s)
 ORDER BY id DESC
 LIMIT %(limit)s
"""
