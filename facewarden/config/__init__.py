"""Settings: one validated object built at start. Nothing else reads the environment."""

from facewarden.config.load import dump_for_child, load_settings, settings_from_flags
from facewarden.config.paths import default_models_dir, default_state_dir
from facewarden.config.schema import Settings
from facewarden.config.secrets import REVEAL
from facewarden.config.sources import SourceConfig, parse_source

__all__ = ["REVEAL", "Settings", "SourceConfig", "default_models_dir", "default_state_dir",
           "dump_for_child", "load_settings", "parse_source", "settings_from_flags"]
