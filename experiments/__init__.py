"""Experiment binaries (absl); run as python -m experiments.<name>."""
