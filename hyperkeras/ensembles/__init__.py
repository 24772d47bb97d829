"""Ensembles of networks: sample N networks in one generator pass, evaluate them all, fuse predictions.

One API serves every source of networks in the library:

* a **generator** — any object with ``.target`` (a `hyperkeras.TargetNetwork`) and
  ``.sample(n, seed) -> params {name: [n, *shape]}`` (`HyperGAN`, `EntropyHypernetwork`, ...): the N
  networks are sampled in ONE generator pass;
* a **params dict** ``{name: [N, *shape]}`` together with ``target=``;
* a **list of trained keras.Models** (deep-ensemble baseline); if they provably compute the same function
  of their weights (equal `architecture`: layers, configs and connections, names aside) and `TargetNetwork`
  can run it, their weights are stacked and evaluated like generated networks, otherwise each model runs
  its own forward pass;
* `MCDropout(model)` — N stochastic forward passes of one model with dropout active (MC dropout);
* a single keras.Model (an "ensemble" of one).

`predict` evaluates all networks on an array or a `tf.data.Dataset` in one vectorised computation,
chunked over networks (`chunk_size`) and examples (`batch_size`) so that memory stays bounded for
N = 1,000, with a progress bar. Per chunk the reductions (sums of probabilities, logits, votes,
entropies) happen inside the compiled graph; only [B, C]-sized results leave it.

Example:

```python
from hyperkeras import ensembles, metrics

pred = ensembles.predict(hypergan, x_test, n=100, seed=1, batch_size=500)
pred.mean_probs            # [B, C]  mean of the networks' softmax probabilities
pred.fused_logits          # [B, C]  mean of the networks' logits (logit fusion); .fused_probs
pred.majority_vote         # [B]     most frequent per-network class (ties -> lowest class)
pred.member_predictions    # [N, B]  each network's class
pred.member_probs          # [N, B, C] each network's probabilities (kept when small; see keep_member_probs)
pred.predictive_entropy    # [B]     entropy of mean_probs (OOD / adversarial score)
metrics.accuracy(pred.mean_probs, y_test)

deep = ensembles.predict([model_a, model_b, model_c], x_test)            # deep ensemble
mc = ensembles.predict(ensembles.MCDropout(dropout_model), x_test, n=50)  # MC dropout
reg = ensembles.predict_regression(hypergan, x_grid, n=1000)             # reg.mean, reg.std

prob_fn = ensembles.probability_fn(hypergan, n=10, seed=3)   # differentiable x -> mean probs [B, C]
```

Sources that output probabilities (last layer softmax) are detected (``output="auto"``); their
log-probabilities stand in for logits in logit fusion (this gives the same fused probabilities).

BatchNorm targets: generated networks have no moving statistics of their own, so for a target with
BatchNorm moving statistics `predict` (and every function here) needs ``state=`` (each network's own,
``target.calibrate_state(params, x_train)``), ``calibration_data=x_train`` (calibrated on the spot), or
``state="shared"`` (the wrapped model's, for every network); without them it refuses. A `Hypernetwork`'s
fixed networks (``n=num_networks`` and its seed) use its kept ``target_state``. Keras models carry their own.
"""

from hyperkeras.ensembles.chunked import (  # noqa: F401
    default_chunk_size,
    log_mean_probs,
    predict,
    predict_regression,
    probability_fn,
)
from hyperkeras.ensembles.results import EnsemblePrediction, RegressionPrediction  # noqa: F401
from hyperkeras.ensembles.sources import (  # noqa: F401
    MCDropout,
    Members,
    ModelMembers,
    TargetMembers,
    architecture,
    as_members,
    log_probs,
    output_kind,
    stack_params,
    stack_state,
    task_of,
)

__all__ = [
    "EnsemblePrediction",
    "RegressionPrediction",
    "Members",
    "TargetMembers",
    "ModelMembers",
    "MCDropout",
    "as_members",
    "stack_params",
    "stack_state",
    "architecture",
    "output_kind",
    "task_of",
    "log_probs",
    "predict",
    "predict_regression",
    "probability_fn",
    "log_mean_probs",
    "default_chunk_size",
]
