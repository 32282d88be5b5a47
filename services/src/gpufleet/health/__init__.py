"""GPU health: checks, the Xid catalog, severity, the daemon and its sinks."""
