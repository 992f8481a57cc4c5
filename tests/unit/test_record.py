"""The run record's one definition of what does not change a run's result, and who follows it."""

from __future__ import annotations

from pathlib import Path

import yaml

from sae_sweep import record
from sae_sweep.run import pack_key
from sae_sweep.sweep.cells import IGNORED_KEYS
from tests.helpers.build import build_cfg

CONFIG_YAML = Path(__file__).resolve().parents[2] / "conf" / "config.yaml"


def test_config_yaml__run_dir_names_leave_out_exactly_record_dirname_excluded_keys():
    """Hydra's exclude list must stay literal YAML; it is the Python definition, key for key."""
    hydra = yaml.safe_load(CONFIG_YAML.read_text())["hydra"]
    excluded = hydra["job"]["config"]["override_dirname"]["exclude_keys"]
    assert tuple(excluded) == record.DIRNAME_EXCLUDED_KEYS


def test_dirname_excluded_keys__cover_every_result_neutral_field():
    for key in record.RESULT_NEUTRAL_KEYS:
        assert any(k == key or k.startswith(key + ".") for k in record.DIRNAME_EXCLUDED_KEYS), key


def test_cell_key__ignores_the_result_neutral_fields():
    assert IGNORED_KEYS == record.RESULT_NEUTRAL_KEYS


def test_pack_key__members_may_differ_in_logging_but_not_in_scheduling():
    base = pack_key(build_cfg())
    assert pack_key(build_cfg(train={"progress": True})) == base
    assert pack_key(build_cfg(train={"save_weights": False, "batch_seed": 3})) == base
    for field, value in (("threads", 1), ("lanes", 2), ("sparse_below", 0.5), ("stacked", "never")):
        assert f"train.{field}" in record.SCHEDULING_KEYS
        assert pack_key(build_cfg(train={field: value})) != base, field
