"""Entry module of the video plugin: registers its components. Imports no torch or timm."""

from jepa_core.hookspecs import hookimpl
from jepa_video import configs


@hookimpl
def register_encoders(register):
    register("vit_video", configs.VideoViTConfig, "jepa_video.encoder:build_video_encoder")


@hookimpl
def register_maskers(register):
    register("multiblock3d", configs.MultiBlock3DConfig, "jepa_video.masker:build_masker")


# -- data sources (video-data) ----------------------------------------------------------------
@hookimpl
def register_data_sources(register):
    register("moving_digits", configs.MovingDigitsConfig,
             "jepa_video.data:build_moving_digits")
    register("video_folder", configs.VideoFolderConfig, "jepa_video.data:build_video_folder")
