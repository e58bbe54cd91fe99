"""The ``key_history`` table: every version of every key."""

INSERT = """
INSERT INTO key_history (key, version, event, value_enc, actor, at)
VALUES (%(key)s, %(version)s, %(event)s, %(value_enc)s, %(actor)s, %(now)s)
"""

PAGE = """
SELECT version, event, value_enc, actor, at FROM key_history
 WHERE key = %(key)s AND version < %(before)s
 ORDER BY version DESC
 LIMIT %(limit)s
"""
