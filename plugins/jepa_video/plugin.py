"""Entry module of the video plugin: registers its components. Imports no torch or timm."""

from jepa_core.hookspecs import hookimpl
from jepa_video import configs
