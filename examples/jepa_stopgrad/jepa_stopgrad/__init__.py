"""jepa-stopgrad: an example third-party JEPA method (see docs/writing_a_method.md)."""
