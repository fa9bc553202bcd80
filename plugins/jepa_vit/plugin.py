"""Entry module of the ViT plugin: registers its components. Imports no torch or timm."""

from jepa_core.hookspecs import hookimpl
from jepa_vit import configs


@hookimpl
def register_encoders(register):
    register("vit", configs.ViTConfig, "jepa_vit.encoder:build_encoder")


@hookimpl
def register_predictors(register):
    register("vit_predictor", configs.PredictorConfig, "jepa_vit.predictor:build_predictor")
