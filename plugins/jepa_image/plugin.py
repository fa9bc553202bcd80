"""Entry module of the image plugin: registers its components. Imports no torch."""

from jepa_core.hookspecs import hookimpl
from jepa_image import configs


@hookimpl
def register_maskers(register):
    register("multiblock", configs.MultiBlockConfig, "jepa_image.multiblock:build_masker")
    register("random", configs.RandomPatchConfig, "jepa_image.random_patches:build_masker")


@hookimpl
def register_data_sources(register):
    register("digits", configs.DigitsConfig, "jepa_image.data:build_digits")
    register("image_folder", configs.ImageFolderConfig, "jepa_image.data:build_image_folder")
    register("synthetic", configs.SyntheticConfig, "jepa_image.data:build_synthetic")
