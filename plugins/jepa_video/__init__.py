"""First-party video plugin: V-JEPA's masker, encoder, predictor, data sources and method."""
