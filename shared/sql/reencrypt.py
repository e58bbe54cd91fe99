"""Re-encryption of stored values under the active key (SPEC §8); batches lock with SKIP LOCKED."""

KEYS_BATCH = """
SELECT key, value_enc FROM keys
 WHERE value_enc IS NOT NULL AND substring(value_enc from 2 for get_byte(value_enc, 0)) <> %(active)s
 ORDER BY key LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""

UPDATE_KEY = "UPDATE keys SET value_enc = %(blob)s WHERE key = %(key)s"

HISTORY_BATCH = """
SELECT key, version, value_enc FROM key_history
 WHERE value_enc IS NOT NULL AND substring(value_enc from 2 for get_byte(value_enc, 0)) <> %(active)s
 ORDER BY key, version LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""

UPDATE_HISTORY = "UPDATE key_history SET value_enc = %(blob)s WHERE key = %(key)s AND version = %(version)s"
