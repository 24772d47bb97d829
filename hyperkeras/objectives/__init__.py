"""Objectives on generated weights: Kozachenko-Leonenko entropy, gauge penalty and gauge transform."""
