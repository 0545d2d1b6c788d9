"""Compose the Hydra config without the CLI (tests, tables and notebooks use this)."""
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dlp.paths import ROOT

from . import methods


def compose_config(overrides: list[str] | None = None) -> dict:
    methods.register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides or []))
    return OmegaConf.to_container(cfg, resolve=True)
