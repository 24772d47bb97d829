"""Benchmarks: each prints one JSON line (see README).

Their consoles stay quiet: the baselines build a tf.function per network or per variant on purpose, so
TensorFlow's "triggered tf.function retracing" warnings say nothing here (an XLA variant that compiles again on
every call is reported in its JSON line instead, `benchmarks.common.run_variant_first_steps`)."""

import logging

logging.getLogger("tensorflow").setLevel(logging.ERROR)
