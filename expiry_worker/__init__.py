"""The DynConfig expiry worker (``python -m expiry_worker``): turns expired keys into ``expired`` events."""
