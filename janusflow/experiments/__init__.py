"""Experiment configs shipped with the package, named as ``--config janusflow:<module>[:arg]``
(no clone needed)."""
