"""First-party image plugin: the I-JEPA multi-block masker, a random-patch masker, and the
digits / image-folder / synthetic data sources."""
