"""Experiment configuration: the schema (frozen dataclasses, no heavy imports; model, training and
data configs by concern, the variant registry), its JSON io, loading experiment files with dotted
overrides, and the named model presets."""
