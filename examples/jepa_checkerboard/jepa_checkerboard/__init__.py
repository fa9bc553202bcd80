"""An example third-party jepa plugin: the checkerboard masker."""
