"""The ``key_history`` table: every version of every key."""

INSERT = """
INSERT INTO key_history (key, version, event, value_enc, actor, at, read_entries, read_owner)
VALUES (%(key)s, %(version)s, %(event)s, %(value_enc)s, %(actor)s, %(now)s, %(read_entries)s, %(read_owner)s)
"""

PAGE = """
SELECT version, event, value_enc, actor, at, read_entries, read_owner FROM key_history
 WHERE key = %(key)s AND version < %(before)s
 ORDER BY version DESC
 LIMIT %(limit)s
"""
