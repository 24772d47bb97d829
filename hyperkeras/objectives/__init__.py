"""Objectives on generated weights: Kozachenko-Leonenko entropy, gauge penalty and gauge transform."""
from hyperkeras.objectives.entropy import kozachenko_leonenko_entropy  # noqa: E402,F401
from hyperkeras.objectives.gauge import check_gauge, gauge_penalty, gauge_transform  # noqa: E402,F401
