"""Experiment configuration: the schema (frozen dataclasses, no heavy imports), its JSON io, loading experiment files with dotted overrides, and the named model presets."""
