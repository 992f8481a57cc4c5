"""The report's thresholds have one source: AnalysisSettings; conf/config.yaml's report callback repeats
them so that a user sees and overrides them there, and this test keeps the two equal."""

from __future__ import annotations

import dataclasses

import yaml

from sae_sweep.analysis.settings import AnalysisSettings
from tests.helpers.cli import REPO


def test_report_callback_yaml__lists_every_analysis_setting_at_its_default():
    conf = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    report = conf["hydra"]["callbacks"]["report"]
    defaults = {f.name: f.default for f in dataclasses.fields(AnalysisSettings)}
    in_yaml = {k: v for k, v in report.items() if k in defaults}
    assert in_yaml == defaults, "conf/config.yaml hydra.callbacks.report differs from AnalysisSettings"
    unknown = set(report) - set(defaults) - {"_target_", "enabled", "refine_rounds", "wandb_mode", "project"}
    assert not unknown, f"report callback keys that are no AnalysisSettings field: {sorted(unknown)}"
