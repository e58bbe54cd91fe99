"""``cache_dirty``: keys whose Redis entry a writer could not make unclean before committing (see
api_server/cache.py), and the channel that tells every api_server at once."""

CHANNEL = "dynconfig_cache"

# In the writer's transaction: record the key and tell every listener ("<version>:<key>") at commit.
RECORD_DIRTY = f"""
INSERT INTO cache_dirty (key, version) VALUES (%(key)s, %(version)s)
ON CONFLICT (key) DO UPDATE SET version = GREATEST(cache_dirty.version, EXCLUDED.version), at = now();
SELECT pg_notify('{CHANNEL}', %(notice)s)
"""

SELECT_DIRTY = "SELECT key, version FROM cache_dirty ORDER BY at LIMIT 1000"

# Only the version we made unclean: a newer record stays for the next scan.
DELETE_CLEANED = "DELETE FROM cache_dirty WHERE key = %(key)s AND version <= %(version)s"
