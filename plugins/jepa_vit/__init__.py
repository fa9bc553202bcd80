"""First-party ViT plugin: timm ViT encoders as I-JEPA uses them, and the narrow ViT predictor."""
