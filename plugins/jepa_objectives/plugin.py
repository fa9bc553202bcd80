"""Entry module of the objectives plugin: registers its components. Imports no torch."""

from jepa_core.hookspecs import hookimpl
from jepa_objectives import configs


@hookimpl
def register_methods(register):
    register("ijepa", configs.IJEPAConfig, "jepa_objectives.methods.ijepa:build_ijepa")
    register("cjepa", configs.CJEPAConfig, "jepa_objectives.methods.cjepa:build_cjepa")
    register("lejepa", configs.LeJEPAConfig, "jepa_objectives.methods.lejepa:build_lejepa")
    register("ijepa_sigreg", configs.IJEPASIGRegConfig,
             "jepa_objectives.methods.ijepa_sigreg:build_ijepa_sigreg")
    register("vjepa", configs.VJEPAConfig, "jepa_objectives.methods.vjepa:build_vjepa")


@hookimpl
def register_target_updaters(register):
    register("ema", configs.EMAConfig, "jepa_objectives.ema:build_ema")


@hookimpl
def register_losses(register):
    register("smooth_l1", configs.SmoothL1Config, "jepa_objectives.losses:build_smooth_l1")
    register("l2", configs.L2Config, "jepa_objectives.losses:build_l2")
    register("l1", configs.L1Config, "jepa_objectives.losses:build_l1")
