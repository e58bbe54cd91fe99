"""The ``key_history`` table: every version of every key."""

PAGE = """
SELECT version, event, value_enc, actor, at, read_entries, read_owner FROM key_history
 WHERE key = %(key)s AND version < %(before)s
 ORDER BY version DESC
 LIMIT %(limit)s
"""

#: One version: what a rollback restores, and who could read it then.
ONE = """
SELECT event, value_enc, read_entries, read_owner FROM key_history WHERE key = %(key)s AND version = %(version)s
"""
