"""What every process runs on: its main and HTTP server with the SIGTERM drain (process), logs,
JSON answers, errors and health (web), the supervisor of background loops and its backoff, the
coalescer, metrics."""
