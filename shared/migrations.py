"""The schema, as numbered migrations. Append only: never edit a migration that has shipped.

``dynconfig-migrate`` (dynconfig_admin/migrate.py) applies them, in order, before a release's
processes roll out; no process migrates (shared/version.py says which schemas each release works with).

A migration runs beside the processes of the release before it (SPEC §1: expand, then contract), so
it must be **add-only** as they see it:
- new tables, new nullable columns or columns with a constant default (no table rewrite), new
  indexes, new rows that old code ignores, data fixes that leave every old statement's answer right;
- an index on a table that may be big is built ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` in a
  migration of its own with ``transactional=False`` and ``indexes=(name,)`` (it blocks no writer; an
  interrupted build leaves an INVALID index, which the runner drops and builds again);
- never, in the same release: dropping or renaming a table, column or index old code uses, NOT NULL
  on a column old code does not fill, a changed meaning or constraint old writes would break. Those
  are contract migrations: they ship one release later, numbered above the previous release's
  ``SCHEMA_MAX``.

Every statement runs under ``lock_timeout`` (a migration never queues behind a long transaction while
every writer queues behind it) and, inside a transaction, ``statement_timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One step of the schema."""

    version: int
    description: str
    sql: str
    #: False: run outside a transaction, as ``CREATE INDEX CONCURRENTLY`` must (then ``sql`` is one
    #: statement, and it is not bounded by ``statement_timeout``: it blocks no writer).
    transactional: bool = True
    #: Indexes ``sql`` builds concurrently: one left INVALID by an interrupted build is dropped first.
    indexes: tuple[str, ...] = ()


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "keys, history, outbox, audit, namespaces",
        """
        CREATE TABLE keys (
            key           text PRIMARY KEY,
            version       bigint NOT NULL,
            value_enc     bytea,                  -- AES-256-GCM blob (shared/security/crypto.py); NULL once deleted
            ttl           integer,
            expires_at    timestamptz,
            acl_read      text[],                 -- NULL: inherit from the namespace (SPEC §5)
            acl_write     text[],
            creator       text NOT NULL,
            deleted       boolean NOT NULL DEFAULT false,
            created_at    timestamptz NOT NULL,
            last_modified timestamptz NOT NULL
        );
        CREATE INDEX keys_expiring ON keys (expires_at) WHERE NOT deleted AND expires_at IS NOT NULL;

        -- Every version of every key, the current one included.
        CREATE TABLE key_history (
            key           text NOT NULL,
            version       bigint NOT NULL,
            event         text NOT NULL CHECK (event IN ('update', 'delete', 'expired')),
            value_enc     bytea,
            actor         text NOT NULL,
            at            timestamptz NOT NULL,
            PRIMARY KEY (key, version)
        );

        -- One row per change, written in the change's transaction. The notifier relays rows in id
        -- order and gives each its global revision; until then revision is NULL.
        CREATE TABLE outbox (
            id            bigserial PRIMARY KEY,
            key           text NOT NULL,
            version       bigint NOT NULL,
            event         text NOT NULL CHECK (event IN ('update', 'delete', 'expired')),
            at            timestamptz NOT NULL,
            revision      bigint UNIQUE,
            relayed_at    timestamptz
        );
        CREATE INDEX outbox_pending ON outbox (id) WHERE revision IS NULL;

        CREATE TABLE namespaces (
            namespace     text PRIMARY KEY,
            acl_read      text[] NOT NULL,
            acl_write     text[] NOT NULL,
            updated_by    text NOT NULL,
            updated_at    timestamptz NOT NULL
        );

        CREATE TABLE audit_log (
            id            bigserial PRIMARY KEY,
            at            timestamptz NOT NULL,
            actor         text,
            action        text NOT NULL,
            key           text,
            version       bigint,
            outcome       text NOT NULL,
            request_id    text
        );
        CREATE INDEX audit_by_key ON audit_log (key, id);
        CREATE INDEX audit_by_actor ON audit_log (actor, id);
        CREATE INDEX audit_by_at ON audit_log (at);
        """,
    ),
    Migration(
        2,
        "revisions: relay state, revision on history",
        """
        -- One row: the last revision the relay assigned and the newest one pruned from the outbox.
        CREATE TABLE relay_state (
            id             boolean PRIMARY KEY DEFAULT true CHECK (id),
            head           bigint NOT NULL DEFAULT 0,
            pruned_through bigint NOT NULL DEFAULT 0
        );
        INSERT INTO relay_state DEFAULT VALUES;
        -- The revision of each version once relayed (history is kept for ever; the outbox is pruned).
        ALTER TABLE key_history ADD COLUMN revision bigint;
        CREATE INDEX outbox_by_at ON outbox (at) WHERE revision IS NOT NULL;
        """,
    ),
    Migration(
        3,
        "history: the read ACL that governed each version",
        """
        -- Who could read this version when it was written: the key's own read list or its governing
        -- namespace's (read_entries), else its creator alone (read_owner). A past version is served
        -- only to a reader admitted both by this and by today's ACL (SPEC §5). Both NULL on versions
        -- written before this migration: those are checked against today's ACL alone.
        ALTER TABLE key_history ADD COLUMN read_entries text[], ADD COLUMN read_owner text;
        """,
    ),
    Migration(
        4,
        "audit: newest first by time, then id",
        """
        -- Batched read/denial records carry their real time but land after later writes (higher id),
        -- so GET /audit orders by (at, id), and pages with a cursor on both.
        DROP INDEX IF EXISTS audit_by_key;
        DROP INDEX IF EXISTS audit_by_actor;
        DROP INDEX IF EXISTS audit_by_at;
        CREATE INDEX audit_by_key ON audit_log (key, at, id);
        CREATE INDEX audit_by_actor ON audit_log (actor, at, id);
        CREATE INDEX audit_by_at ON audit_log (at, id);
        """,
    ),
    Migration(
        5,
        "keys in byte order, for keyset listing",
        """
        -- Listing pages walk keys in byte order (as clients compare them) from a cursor, whatever the
        -- database's collation; prefix LIKE on a namespace uses it too.
        CREATE INDEX keys_by_key_bytes ON keys (key COLLATE "C");
        """,
    ),
    Migration(
        6,
        "cache_dirty: writes that could not reach the Redis cache",
        """
        -- A writer that cannot make a key's Redis entry unclean before committing records it here in
        -- the same transaction; api_servers keep such keys out of the cache until one has (api_server/cache.py).
        CREATE TABLE cache_dirty (
            key     text PRIMARY KEY,
            version bigint NOT NULL,
            at      timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    Migration(
        7,
        "revisions assigned in the writing transaction",
        """
        -- From now on a write takes its revision from relay_state.head inside its own transaction
        -- (shared/sql/writes.py), and keys carry the revision of their current state. Rows still
        -- waiting for the old relay get theirs here, in id order, as it would have given them.
        ALTER TABLE keys ADD COLUMN revision bigint;
        WITH pending AS (
            SELECT id, (SELECT head FROM relay_state) + row_number() OVER (ORDER BY id) AS revision
              FROM outbox WHERE revision IS NULL
        ), assigned AS (
            UPDATE outbox o SET revision = p.revision FROM pending p WHERE o.id = p.id
            RETURNING o.key, o.version, o.revision
        ), history AS (
            UPDATE key_history h SET revision = a.revision FROM assigned a WHERE h.key = a.key AND h.version = a.version
        )
        UPDATE relay_state SET head = GREATEST(head, coalesce((SELECT max(revision) FROM assigned), 0));
        UPDATE keys k SET revision = h.revision FROM key_history h WHERE h.key = k.key AND h.version = k.version;
        DROP INDEX IF EXISTS outbox_pending;
        """,
    ),
    Migration(
        8,
        "the audit chain: every audit row sealed with an HMAC over the row before it",
        """
        -- shared/audit/chain.py: seq numbers the rows in chain order (no gaps), mac is the row's HMAC,
        -- mac_key names the key. Rows written before this migration stay unsealed: legacy_through is
        -- the last of them, and any unsealed row after it is one nobody who appends could have made.
        ALTER TABLE audit_log ADD COLUMN seq bigint, ADD COLUMN mac bytea, ADD COLUMN mac_key text;
        CREATE UNIQUE INDEX audit_by_seq ON audit_log (seq);
        CREATE TABLE audit_chain (
            only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row),
            seq            bigint NOT NULL,
            mac            bytea NOT NULL,
            legacy_through bigint NOT NULL
        );
        INSERT INTO audit_chain (seq, mac, legacy_through)
        SELECT 0, decode(repeat('00', 32), 'hex'), coalesce(max(id), 0) FROM audit_log;
        """,
    ),
    Migration(
        9,
        "the audit chain: a sealed head, adoption records, the head each batch was appended after",
        """
        -- shared/audit/chain.py. Nullable columns without defaults: no table rewrite, and the previous
        -- release keeps writing (its statements name their columns; it moves seq and mac and leaves
        -- the seal stale, which verify reports as such).
        -- audit_log.detail: what the chain's own records say (an adoption's id range, count, digest);
        -- link_seq/link_seal: on the first row of each batch, the head's seal its writer found.
        ALTER TABLE audit_log ADD COLUMN detail text, ADD COLUMN link_seq bigint, ADD COLUMN link_seal bytea;
        -- The head's seal: an HMAC over (sealed_seq, sealed_mac, adopted_through) made with seal_key;
        -- adopted_through: rows without a seal with ids up to it are vouched for by adoption records.
        -- All NULL until a process of this release first appends.
        ALTER TABLE audit_chain
            ADD COLUMN sealed_seq bigint, ADD COLUMN sealed_mac bytea, ADD COLUMN seal bytea,
            ADD COLUMN seal_key text, ADD COLUMN adopted_through bigint;
        """,
    ),
    Migration(
        10,
        "key_history by time, for pruning past versions by age",
        """
        -- The retention of past versions (HISTORY_RETENTION_DAYS) walks history by age. Built
        -- concurrently: key_history is the biggest table but one, and writers keep writing.
        CREATE INDEX CONCURRENTLY IF NOT EXISTS key_history_by_at ON key_history (at)
        """,
        transactional=False,
        indexes=("key_history_by_at",),
    ),
    Migration(
        11,
        "transactions: the changes of one POST /txn share the revision clients see",
        """
        -- A transaction's changes take consecutive positions in the change log (outbox.revision:
        -- unique, no gaps, as before) and one revision as clients see it, the last of those
        -- positions: on each of its outbox rows in txn (NULL for a single write), and in
        -- keys.revision and key_history.revision. Nullable without a default: no table rewrite. The
        -- previous release ignores the column and relays a transaction's rows as single events,
        -- each at its own position: split, but nothing lost or repeated while it runs.
        ALTER TABLE outbox ADD COLUMN txn bigint;
        """,
    ),
]
