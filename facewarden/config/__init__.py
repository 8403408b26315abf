"""Settings: one validated object built at start-up. Nothing else reads the environment."""

from facewarden.config.load import load_settings, settings_from_flags
from facewarden.config.schema import Settings

__all__ = ["Settings", "load_settings", "settings_from_flags"]
