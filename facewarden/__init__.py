"""facewarden: offline, audited face processing of stored images."""

__version__ = "0.1.0"
