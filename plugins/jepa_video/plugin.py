"""Entry module of the video plugin: registers its components. Imports no torch or timm."""

from jepa_core.hookspecs import hookimpl
from jepa_video import configs


@hookimpl
def register_maskers(register):
    register("multiblock3d", configs.MultiBlock3DConfig, "jepa_video.masker:build_masker")
