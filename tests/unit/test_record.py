"""The run record's one definition of what does not change a run's result, and who follows it."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from sae_sweep import record
from sae_sweep.run import pack_key
from sae_sweep.sweep.cells import cell_key
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


def test_cell_key__ignores_the_result_neutral_fields_but_not_the_rest():
    def key(**train) -> str:
        return cell_key(OmegaConf.structured(build_cfg(train=train)))

    base = key()
    assert key(progress=True, checkpoint_every=4096, threads=2) == base
    assert key(lr=0.123) != base


def test_pack_key__members_may_differ_in_logging_but_not_in_scheduling():
    base = pack_key(build_cfg())
    assert pack_key(build_cfg(train={"progress": True})) == base
    assert pack_key(build_cfg(train={"save_weights": False, "batch_seed": 3})) == base
    for field, value in (("threads", 1), ("lanes", 2), ("sparse_below", 0.5), ("stacked", "never")):
        assert f"train.{field}" in record.SCHEDULING_KEYS
        assert pack_key(build_cfg(train={field: value})) != base, field
