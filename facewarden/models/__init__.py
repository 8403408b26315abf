"""Model registry, installation and thin model wrappers (detectors, segmenters, embedders)."""
