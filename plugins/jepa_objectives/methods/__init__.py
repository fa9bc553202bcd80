"""First-party JEPA methods: each owns its modules, the loss of a micro-batch and what follows
an optimizer step (`jepa_core.interfaces.Method`)."""
