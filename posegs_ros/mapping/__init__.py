"""Mapping: the three-stage window optimization, densification and pruning."""
