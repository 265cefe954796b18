"""The typed training config: presets, files, dotted overrides, derived accumulation."""

from __future__ import annotations

import tomllib

import pytest

from train.config import PRESET_DIR, ConfigError, TrainLoopConfig, accumulation_steps, load_config


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
def test_presets_load(preset):
    cfg = load_config(preset, [])
    assert cfg.output_dir.startswith("runs/")


def test_presets_are_the_three_we_ship():
    assert {p.stem for p in PRESET_DIR.glob("*.toml")} >= {"digits", "resnet-fake", "gpt-tiny"}


def test_overrides_are_typed_and_ordered():
    cfg = load_config("digits", ["train.max_steps=7", "optim.lr=0.5", "metrics.plot=false",
                                 "output_dir=runs/x", "train.max_steps=9"])
    assert cfg.train.max_steps == 9 and cfg.optim.lr == 0.5 and cfg.metrics.plot is False
    assert cfg.output_dir == "runs/x"


def test_file_config_round_trips(tmp_path):
    cfg = load_config("gpt-tiny", ["seed=3"])
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert load_config(str(path), []) == cfg
    assert tomllib.loads(cfg.to_toml())["model"]["name"] == "gpt"


@pytest.mark.parametrize("override", ["model=3", "model.name.x=1", "optim.lr=-1", "seed=1.5", "data.dataset=mnist"])
def test_bad_overrides(override):
    with pytest.raises(ConfigError):
        load_config("digits", [override])


def test_accumulation_keeps_the_global_batch():
    cfg = TrainLoopConfig(global_batch_size=64, micro_batch_size=16)
    assert [accumulation_steps(cfg, w) for w in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ConfigError, match=r"train\.global_batch_size"):
        accumulation_steps(cfg, 3)
