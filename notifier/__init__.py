"""The DynConfig notifier (``python -m notifier``): outbox relay, Redis fan-out and the WebSocket watch."""
