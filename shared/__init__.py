"""Code shared by the DynConfig processes: settings, storage, auth, ACLs, events."""
