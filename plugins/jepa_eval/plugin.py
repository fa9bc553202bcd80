"""Entry module of the evaluation plugin: registers its protocols. Imports no torch."""

from jepa_core.hookspecs import hookimpl
from jepa_eval import configs


@hookimpl
def register_eval_protocols(register):
    register("knn", configs.KNNConfig, "jepa_eval.knn:build_knn")
    register("linear", configs.LinearConfig, "jepa_eval.linear:build_linear")
    register("attentive", configs.AttentiveConfig, "jepa_eval.attentive:build_attentive")
    register("lowshot", configs.LowShotConfig, "jepa_eval.lowshot:build_lowshot")
    register("rankme", configs.RankMeConfig, "jepa_eval.rankme:build_rankme")
