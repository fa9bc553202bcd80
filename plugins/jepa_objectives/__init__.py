"""First-party objectives plugin: the EMA target updater and the smooth-L1 / L2 losses."""
