"""DynConfig's one-off operator commands: run by hand, a Job or a CronJob, then they exit. Each is a
console script of the package (setup.cfg) and a module here (``python -m dynconfig_admin.<module>``):

    dynconfig-migrate     (migrate.py)     bring the database's schema up to this release; run before a
                                           release's processes roll out (they never migrate)
    dynconfig-audit       (audit.py)       verify the tamper-evident audit trail, stream it as JSON lines,
                                           or adopt rows a release before the chain wrote without a seal
    dynconfig-reencrypt   (reencrypt.py)   re-seal every stored value with the active key after a key
                                           rotation
    dynconfig-backup      (backup.py)      dump a database with pg_dump and restore it (or mark one restored
                                           by other means); backup_manifest.py is the manifest it writes

Only the command layer lives here; what the commands run on (the audit chain, the migrations and the
schema range, the SQL) is runtime code in ``shared/`` and ``api_server/``, which the serving processes
use too. No serving process (api_server, notifier, expiry_worker) imports this package.
"""
