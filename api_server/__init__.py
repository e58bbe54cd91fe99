"""The DynConfig read/write API (``python -m api_server``)."""
