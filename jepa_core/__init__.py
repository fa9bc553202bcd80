"""jepa: a modular plugin framework for joint-embedding predictive architectures.

This package stays light on import: torch and timm are imported only by the modules that
need them (the trainer, the models), so that `jepa --help` and `jepa plugins` start fast.
"""

__version__ = "0.1.0"

KINDS = ("method", "encoder", "predictor", "masker", "target_updater", "loss", "data_source",
         "eval_protocol")
