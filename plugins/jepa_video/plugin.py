"""Entry module of the video plugin: registers its components. Imports no torch or timm."""

from jepa_core.hookspecs import hookimpl
from jepa_video import configs


# -- data sources (video-data) ----------------------------------------------------------------
@hookimpl
def register_data_sources(register):
    register("moving_digits", configs.MovingDigitsConfig,
             "jepa_video.data:build_moving_digits")
    register("video_folder", configs.VideoFolderConfig, "jepa_video.data:build_video_folder")
