"""Continual learning: tasks learned one after another, by a task-conditioned hypernetwork and the baselines.

Von Oswald, Henning, Grewe & Sacramento (ICLR 2020, "Continual learning with hypernetworks"): one generator
makes the whole weight vector θ_t = h(e_t) of a target network from a learned embedding e_t per task. While
task t is learned, the generator's outputs for every earlier task's embedding are kept close to the ones
saved just before task t started (`output_regularizer`), so the networks of earlier tasks stay as they were
while the generator (and e_t) learn the new one.

Everything here works on one target, any Keras classifier (e.g. ``hyperkeras.targets.build_model("mlp")``),
and gives every method the same images per task:

- task builders: `split_tasks` (consecutive class pairs), `permuted_tasks` (a fixed pixel permutation per
  task, `pixel_permutations`), both with the same number of training images in every task;
- learners, one protocol (``train_task(task, x, y, steps, batch_size, seed)``, ``predict(task, x)`` ->
  probabilities ``[N, C]`` of the task's C classes, ``num_params``):
  `HypernetworkLearner` (the output regulariser; ``HypernetworkLearner.from_hypernetwork(model)`` for a
  `hyperkeras.models.Hypernetwork` conditioned on task ids), `FineTuning`, `OnlineEWC` (`fisher_diagonal`),
  `SeparateNetworks` (one network per task), `Multitask` (joint training on all tasks: the upper bound;
  ``train_joint``);
- `run_sequence`: tasks one after another with the accuracy matrix R[i, j] (accuracy on task j after
  training task i), `average_accuracy` and `forgetting` from it; `infer_task_by_entropy` (HNET+ENT).

Task-incremental setting: the task id is given at test time. Every task has C output classes
(``classes_per_task``; 2 for split, 10 for permuted). The hypernetwork generates a whole network, its
C-unit output layer included, per task. The baselines that share one network (fine-tuning, EWC,
multi-task) have ``head="multi"`` by default: one C-unit output head per task (the target's last layer
has T·C units, the task id picks its C), as in the task-incremental scenario of van de Ven & Tolias
(2019) that von Oswald et al. compare with; ``head="shared"`` gives every task the same C units.

Example:

```python
import hyperkeras as hk
from hyperkeras import continual

train = hk.data.load_arrays("digits", "train", resize=28)
test = hk.data.load_arrays("digits", "test", resize=28)
tasks = continual.split_tasks(train, test, num_tasks=5)
model = hk.targets.build_model("mlp", input_shape=(28, 28, 1), hidden=(64,), num_classes=2 * 5)
learner = continual.FineTuning(model, num_tasks=5, classes_per_task=2)
result = continual.run_sequence(learner, tasks, steps_per_task=100, batch_size=32)
result["average_accuracy"], result["forgetting"], result["matrix"]
```
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from hyperkeras import probabilities

__all__ = [
    "Task",
    "split_tasks",
    "permuted_tasks",
    "pixel_permutations",
    "permute_pixels",
    "average_accuracy",
    "forgetting",
    "output_regularizer",
    "fisher_diagonal",
    "task_logits",
    "FineTuning",
    "OnlineEWC",
    "SeparateNetworks",
    "Multitask",
    "HypernetworkLearner",
    "run_sequence",
    "evaluate_tasks",
    "infer_task_by_entropy",
]


# ---------------------------------------------------------------------------------------------- tasks
@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """One task: its training and test arrays, labels ``0 .. C-1``, and `classes`, the original label of
    each of its C output classes (split: the class pair; permuted: all classes). `permutation` is the pixel
    permutation of a permuted task (None otherwise)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple
    permutation: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _check_pair(arrays, what):
    if not isinstance(arrays, (tuple, list)) or len(arrays) != 2:
        raise TypeError(f"{what} must be a pair (x, y) of arrays, got {type(arrays).__name__}.")
    x, y = np.asarray(arrays[0]), np.asarray(arrays[1])
    if len(x) != len(y):
        raise ValueError(f"{what}: x has {len(x)} examples but y has {len(y)} labels.")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers of shape [N], got {y.dtype} {y.shape}.")
    return x, y


def _equal_size(xs, ys, images_per_task, seed):
    """Cuts every task's training set to the same number of images (seeded): `images_per_task`, or the
    smallest task's size when None."""
    smallest = min(len(y) for y in ys)
    n = smallest if images_per_task is None else int(images_per_task)
    if n < 1 or n > smallest:
        raise ValueError(f"images_per_task={images_per_task}: the smallest task has {smallest} training images.")
    out = []
    for t, (x, y) in enumerate(zip(xs, ys)):
        if len(y) > n:
            idx = np.sort(np.random.RandomState(seed + 7919 * t).permutation(len(y))[:n])
            x, y = x[idx], y[idx]
        out.append((x, y))
    return out


def split_tasks(train, test, num_tasks: int = 5, classes_per_task: int = 2, images_per_task=None, seed: int = 0):
    """Split benchmark: task t holds the classes ``sorted_labels[t·C : (t+1)·C]`` (C = `classes_per_task`;
    consecutive pairs 0/1, 2/3, ... by default), relabelled ``0 .. C-1`` in that order.

    Args:
        train, test: ``(x, y)`` arrays with integer labels.
        images_per_task: training images per task (a seeded subset); default: the smallest task's count,
            so that every task has as many. Test sets are kept whole.
        seed: seed of the subsets.

    Returns: a list of `Task`.
    """
    (x, y), (xt, yt) = _check_pair(train, "train"), _check_pair(test, "test")
    labels = np.unique(y)
    need = int(num_tasks) * int(classes_per_task)
    if num_tasks < 1 or classes_per_task < 2:
        raise ValueError(f"need num_tasks >= 1 and classes_per_task >= 2, got {num_tasks}, {classes_per_task}.")
    if len(labels) < need:
        raise ValueError(
            f"split_tasks: {num_tasks} tasks of {classes_per_task} classes need {need} classes; the data has "
            f"{len(labels)} ({labels.tolist()})."
        )
    parts, tests, groups = [], [], []
    for t in range(num_tasks):
        cls = labels[t * classes_per_task : (t + 1) * classes_per_task]
        m, mt = np.isin(y, cls), np.isin(yt, cls)
        if not mt.any():
            raise ValueError(f"split_tasks: no test example has the classes {cls.tolist()} of task {t}.")
        parts.append((x[m], np.searchsorted(cls, y[m]).astype(np.int32)))
        tests.append((xt[mt], np.searchsorted(cls, yt[mt]).astype(np.int32)))
        groups.append(tuple(int(c) for c in cls))
    parts = _equal_size([p[0] for p in parts], [p[1] for p in parts], images_per_task, seed)
    return [
        Task(f"classes {'/'.join(map(str, g))}", px, py, tx, ty, g)
        for (px, py), (tx, ty), g in zip(parts, tests, groups)
    ]


def pixel_permutations(num_tasks: int, num_pixels: int, seed: int = 0) -> np.ndarray:
    """``[num_tasks, num_pixels]``: one fixed random permutation of the pixel positions per task, drawn from
    `seed` (task t's from ``RandomState(seed + t)``, so the first tasks do not depend on `num_tasks`)."""
    return np.stack([np.random.RandomState(seed + t).permutation(int(num_pixels)) for t in range(int(num_tasks))])


def permute_pixels(x, permutation) -> np.ndarray:
    """Images ``[N, H, W, (C)]`` with their H·W pixel positions reordered by `permutation` (channels move
    together): ``out.reshape(N, H*W, -1)[:, i] = x.reshape(N, H*W, -1)[:, permutation[i]]``."""
    x = np.asarray(x)
    perm = np.asarray(permutation)
    n_pixels = int(np.prod(x.shape[1:3]))
    if perm.shape != (n_pixels,) or not np.array_equal(np.sort(perm), np.arange(n_pixels)):
        raise ValueError(
            f"permutation must be a permutation of the {n_pixels} pixel positions, got shape {perm.shape}."
        )
    flat = x.reshape(len(x), n_pixels, -1)
    return flat[:, perm].reshape(x.shape)


def permuted_tasks(train, test, num_tasks: int = 10, seed: int = 0, images_per_task=None):
    """Permuted benchmark: task t is the whole dataset with the pixel permutation
    ``pixel_permutations(num_tasks, H·W, seed)[t]`` applied to its training and test images; all classes,
    labels unchanged. `images_per_task` (default: all training images) is a seeded subset, different per
    task, of the same size in every task."""
    (x, y), (xt, yt) = _check_pair(train, "train"), _check_pair(test, "test")
    if x.ndim < 3:
        raise ValueError(f"permuted_tasks needs images [N, H, W(, C)], got shape {x.shape}.")
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
    perms = pixel_permutations(num_tasks, int(np.prod(x.shape[1:3])), seed)
    classes = tuple(int(c) for c in np.unique(np.concatenate([y, yt])))
    if classes != tuple(range(len(classes))):
        raise ValueError(f"permuted_tasks expects labels 0 .. C-1, got {classes}.")
    parts = _equal_size([x] * num_tasks, [y] * num_tasks, images_per_task or len(y), seed)
    return [
        Task(
            f"permutation {t}",
            permute_pixels(px, p),
            py.astype(np.int32),
            permute_pixels(xt, p),
            yt.astype(np.int32),
            classes,
            p,
        )
        for t, ((px, py), p) in enumerate(zip(parts, perms))
    ]


# -------------------------------------------------------------------------------------------- metrics
def _matrix(matrix) -> np.ndarray:
    r = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[0] > r.shape[1]:
        raise ValueError(
            f"an accuracy matrix is [tasks trained, tasks] with at most as many rows as tasks, got {r.shape}."
        )
    return r


def average_accuracy(matrix) -> float:
    """Mean accuracy over all tasks after the last task: the mean of the matrix's last row (R[i, j] =
    accuracy on task j after training tasks 0..i; None/NaN for tasks not yet trained)."""
    last = _matrix(matrix)[-1]
    if np.isnan(last).any():
        raise ValueError("the last row of the accuracy matrix must have every task's accuracy.")
    return float(last.mean())


def forgetting(matrix) -> float:
    """Mean forgetting (Chaudhry et al. 2018): for each task j but the last, its best accuracy while
    later tasks were learned, ``max_{j <= i < T-1} R[i, j]``, minus its final accuracy ``R[T-1, j]``;
    averaged over those tasks (negative: later tasks helped). 0.0 for one task. Needs a row per task."""
    r = _matrix(matrix)
    t = r.shape[0]
    if t != r.shape[1]:
        raise ValueError(f"forgetting needs one row per task (a sequential run), got {r.shape}.")
    if t == 1:
        return 0.0
    drops = [np.nanmax(r[j : t - 1, j]) - r[t - 1, j] for j in range(t - 1)]
    return float(np.mean(drops))


# ------------------------------------------------------------------------------------- regularisers
def output_regularizer(current, saved, beta: float, mask=None):
    """Von Oswald et al.'s output regulariser: ``beta / n · Σ_t ||current[t] − saved[t]||²`` over the n
    earlier tasks (rows where `mask` is 1; all rows when None), with `current` the generator's flat weight
    vectors ``[T, P]`` for the earlier tasks' embeddings now and `saved` those saved before the present
    task started. 0 when there is no earlier task."""
    current = tf.convert_to_tensor(current)
    saved = tf.cast(tf.convert_to_tensor(saved), current.dtype)
    sq = tf.reduce_sum(tf.square(current - saved), axis=-1)
    if mask is None:
        mask = tf.ones_like(sq)
    mask = tf.cast(mask, sq.dtype)
    n = tf.reduce_sum(mask)
    return tf.cast(beta, sq.dtype) * tf.math.divide_no_nan(tf.reduce_sum(mask * sq), n)


def task_logits(outputs, task_ids, num_heads: int, classes_per_task: int, kind: str = "logits"):
    """The C = `classes_per_task` logits of each example's task: `outputs` ``[B, num_heads·C]`` (logits or
    probabilities, `kind`) taken as log-probabilities, and head ``task_ids[b]`` (``[B]`` ints; head 0 for
    all when `num_heads` is 1) sliced out. A softmax over the slice renormalises the task's classes."""
    logits = probabilities.as_logits(outputs, kind)
    if num_heads == 1:
        return logits
    logits = tf.reshape(logits, [-1, num_heads, classes_per_task])
    return tf.gather(logits, tf.cast(task_ids, tf.int32), axis=1, batch_dims=1)


_FISHER_FUNCTIONS = weakref.WeakKeyDictionary()  # model -> {(logits_fn, empirical): tf.function}


def _logits_of(model, logits_fn):
    if logits_fn is not None:
        return logits_fn
    from hyperkeras.ensembles import output_kind

    kind = output_kind(model)
    return lambda outputs: probabilities.as_logits(outputs, kind)


def _fisher_function(model, logits_fn, empirical):
    """The traced per-pair squared-gradient sum of `fisher_diagonal`, one per (model, logits_fn, kind): it
    reads the model's current weights when it runs."""
    cache = _FISHER_FUNCTIONS.setdefault(model, {})
    key = (logits_fn, empirical)
    if key in cache:
        return cache[key]
    to_logits = _logits_of(model, logits_fn)

    @tf.function(reduce_retracing=True)
    def chunk(xb, cb, used):
        trainable = [tf.convert_to_tensor(v) for v in model.trainable_variables]
        non_trainable = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]

        def one(args):  # one (example, class) pair: weight · (∇ log p(class | example))²
            xi, ci, ui = args
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                out, _ = model.stateless_call(trainable, non_trainable, xi[None], training=False)
                logp = tf.nn.log_softmax(tf.cast(to_logits(out), tf.float32), axis=-1)[0]
                value = logp[ci]
            weight = ui if empirical else ui * tf.stop_gradient(tf.exp(value))
            return [weight * tf.square(tf.cast(g, tf.float32)) for g in tape.gradient(value, trainable)]

        return [tf.reduce_sum(s, axis=0) for s in tf.vectorized_map(one, (xb, cb, used))]

    cache[key] = chunk
    return chunk


def fisher_diagonal(model: keras.Model, x, y=None, logits_fn: Callable | None = None, batch_size: int = 128):
    """Diagonal of the Fisher information of `model`'s classifier at its current weights, from per-example
    gradients: ``F = mean_i g_i²`` with ``g_i = ∇_θ log p(y_i | x_i)`` (the empirical Fisher, labels `y`),
    or, when `y` is None, the expectation over the model's own predictions,
    ``F = mean_i Σ_c p(c | x_i) (∇_θ log p(c | x_i))²``.

    Args:
        model: a built keras.Model; its trainable variables are θ.
        x: inputs ``[N, ...]``.
        y: integer labels ``[N]``, or None.
        logits_fn: maps the model's outputs ``[B, ...]`` to class logits ``[B, C]`` (e.g. one task's head,
            `task_logits`); default: the outputs as logits (log of a softmax output).
        batch_size: (example, class) pairs whose gradients are computed together (`tf.vectorized_map`).

    Returns: a list of NumPy arrays, one per trainable variable, in ``model.trainable_variables`` order.
    """
    x = np.asarray(x)
    empirical = y is not None
    chunk = _fisher_function(model, logits_fn, empirical)
    if empirical:
        pair_x, pair_c = np.arange(len(x)), np.asarray(y, np.int32)
        if pair_c.shape != (len(x),):
            raise ValueError(f"fisher_diagonal: y must be [N] labels for the {len(x)} examples, got {pair_c.shape}.")
    else:  # every (example, class) pair: the expectation over the model's predictive distribution, exactly
        num_classes = int(_logits_of(model, logits_fn)(model(x[:1], training=False)).shape[-1])
        pair_x = np.repeat(np.arange(len(x)), num_classes)
        pair_c = np.tile(np.arange(num_classes, dtype=np.int32), len(x))
    total = [np.zeros(v.shape, np.float64) for v in model.trainable_variables]
    for s in range(0, len(pair_x), batch_size):
        idx, cls = pair_x[s : s + batch_size], pair_c[s : s + batch_size]
        used = np.ones(batch_size, np.float32)
        if len(idx) < batch_size:  # padded to one shape (one trace): the padding counts 0
            used[len(idx) :] = 0.0
            idx = np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)])
            cls = np.concatenate([cls, np.zeros(batch_size - len(cls), cls.dtype)])
        part = chunk(tf.constant(x[idx]), tf.constant(cls), tf.constant(used))
        total = [t + p.numpy() for t, p in zip(total, part)]
    return [(t / max(len(x), 1)).astype(np.float32) for t in total]


# -------------------------------------------------------------------------------------------- learners
_IDS = tf.TensorSpec([None], tf.int32)  # labels, task ids
_TASK = tf.TensorSpec([], tf.int32)


def _batches(n: int, batch_size: int, steps: int, seed: int):
    """`steps` index arrays of `batch_size`, from successive seeded shuffles of ``range(n)``."""
    rng = np.random.RandomState(seed)
    order, pos = rng.permutation(n), 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = np.concatenate([order[pos:], rng.permutation(n)]), 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def _reset_optimizer(opt):
    """Zeros an optimizer's state (step counter, moments), keeping its learning rate: every task starts
    with a fresh optimizer, as in von Oswald et al.'s code."""
    for v in opt.variables:
        if v.name != "learning_rate":
            v.assign(tf.zeros(v.shape, v.dtype))


class _KerasLearner:
    """A Keras classifier trained directly (the baselines). `head`: ``"multi"`` (a C-unit head per task;
    the model's output has T·C units) or ``"shared"`` (C units for every task)."""

    def __init__(self, model, num_tasks, classes_per_task, head="multi", learning_rate=1e-3):
        from hyperkeras.ensembles import output_kind

        if not isinstance(model, keras.Model) or not model.built:
            raise TypeError("the learner needs a built keras.Model (give it a keras.Input).")
        if head not in ("multi", "shared"):
            raise ValueError(f"head must be 'multi' or 'shared', got {head!r}.")
        self.model = model
        self.num_tasks = int(num_tasks)
        self.classes_per_task = int(classes_per_task)
        self.head = head
        self.num_heads = self.num_tasks if head == "multi" else 1
        width = int(model.outputs[0].shape[-1])
        if width != self.num_heads * self.classes_per_task:
            raise ValueError(
                f"head={head!r} with {num_tasks} tasks of {classes_per_task} classes needs a model with "
                f"{self.num_heads * self.classes_per_task} outputs; {model.name!r} has {width}."
            )
        self.kind = output_kind(model)
        self._x_spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype or tf.float32)
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.optimizer.build(model.trainable_variables)
        self._step = None
        self._predict = None

    @property
    def num_params(self) -> int:
        """Trainable weights kept after all tasks (the model's)."""
        return int(sum(int(np.prod(v.shape)) for v in self.model.trainable_variables))

    def _logits(self, x, ids, training):
        out = self.model(x, training=training)
        return task_logits(out, ids, self.num_heads, self.classes_per_task, self.kind)

    def penalty(self):
        """Extra loss term (0 here; EWC's quadratic penalty)."""
        return tf.constant(0.0)

    def _train_step(self):
        if self._step is None:
            variables = self.model.trainable_variables

            @tf.function(input_signature=[self._x_spec, _IDS, _IDS])  # one trace per learner
            def step(x, y, ids):
                with tf.GradientTape() as tape:
                    logits = tf.cast(self._logits(x, ids, True), tf.float32)
                    ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
                    loss = ce + self.penalty()
                grads = tape.gradient(loss, variables)
                self.optimizer.apply(grads, variables)
                return loss

            self._step = step
        return self._step

    def _fit(self, x, y, ids, steps, batch_size, seed):
        _reset_optimizer(self.optimizer)
        step = self._train_step()
        loss = None
        for idx in _batches(len(y), batch_size, steps, seed):
            loss = step(tf.constant(x[idx], self._x_spec.dtype), tf.constant(y[idx]), tf.constant(ids[idx]))
        return None if loss is None else float(loss)

    def train_task(self, task: int, x, y, steps: int, batch_size: int = 32, seed: int = 0):
        """Trains on task `task`'s arrays for `steps` steps of `batch_size` (seeded batches)."""
        ids = np.full(len(y), int(task), np.int32)
        return self._fit(np.asarray(x), np.asarray(y, np.int32), ids, steps, batch_size, seed)

    def after_task(self, task: int, x, y):
        """Called when task `task` is learned (EWC computes its Fisher here)."""

    def predict(self, task: int, x, batch_size: int = 1000) -> np.ndarray:
        """Probabilities ``[N, C]`` of task `task`'s classes."""
        if self._predict is None:
            self._predict = tf.function(
                lambda xb, ids: tf.nn.softmax(tf.cast(self._logits(xb, ids, False), tf.float32)),
                input_signature=[self._x_spec, _IDS],
            )
        out = []
        for s in range(0, len(x), batch_size):
            xb = tf.constant(np.asarray(x[s : s + batch_size]), self._x_spec.dtype)
            out.append(self._predict(xb, tf.fill([len(xb)], int(task))).numpy())
        return np.concatenate(out)


class FineTuning(_KerasLearner):
    """One network trained on each task in turn, nothing protecting earlier tasks (the lower bound).

    Args:
        model: a built Keras classifier with ``num_tasks·classes_per_task`` outputs (``head="multi"``) or
            ``classes_per_task`` (``head="shared"``).
        num_tasks, classes_per_task: the benchmark's.
        head: ``"multi"`` or ``"shared"`` (see the module docstring).
        learning_rate: Adam's (its state is reset at every task).
    """


class OnlineEWC(_KerasLearner):
    """Online elastic weight consolidation (Kirkpatrick et al. 2017; the online form of Schwarz et al.
    2018): after task t, ``F̃ ← gamma·F̃ + F_t`` (`fisher_diagonal` on `fisher_examples` training images
    of task t, the Fisher expected under the model's predictions over the task's head) and θ* ← θ; while
    later tasks are learned the loss has ``lam / 2 · Σ F̃ (θ − θ*)²`` added.

    Args: those of `FineTuning`, and
        lam: λ, the penalty's weight.
        gamma: decay of the accumulated Fisher (1: plain sum over tasks).
        fisher_examples: training images of each task on which its Fisher is computed.
    """

    def __init__(
        self,
        model,
        num_tasks,
        classes_per_task,
        head="multi",
        learning_rate=1e-3,
        lam=100.0,
        gamma=1.0,
        fisher_examples=500,
    ):
        super().__init__(model, num_tasks, classes_per_task, head, learning_rate)
        self.lam, self.gamma, self.fisher_examples = float(lam), float(gamma), int(fisher_examples)
        self.fisher = [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in model.trainable_variables]
        self.anchor = [tf.Variable(tf.convert_to_tensor(v), trainable=False) for v in model.trainable_variables]
        self._fisher_task = tf.Variable(0, dtype=tf.int32, trainable=False)

    def _task_head(self, outputs):
        """The outputs' logits of the head of the task whose Fisher is computed (`fisher_diagonal`)."""
        ids = tf.fill([tf.shape(outputs)[0]], self._fisher_task)
        return task_logits(outputs, ids, self.num_heads, self.classes_per_task, self.kind)

    def penalty(self):
        total = tf.add_n(
            [
                tf.reduce_sum(f * tf.square(tf.cast(v, tf.float32) - a))
                for f, v, a in zip(self.fisher, self.model.trainable_variables, self.anchor)
            ]
        )
        return 0.5 * self.lam * total

    def after_task(self, task: int, x, y):
        n = min(self.fisher_examples, len(x))
        idx = np.sort(np.random.RandomState(task).permutation(len(x))[:n])
        self._fisher_task.assign(int(task))
        fisher = fisher_diagonal(self.model, np.asarray(x)[idx], logits_fn=self._task_head)
        for acc, f in zip(self.fisher, fisher):
            acc.assign(self.gamma * acc + f)
        for a, v in zip(self.anchor, self.model.trainable_variables):
            a.assign(tf.cast(v, tf.float32))


class SeparateNetworks(_KerasLearner):
    """One network per task, each trained from the model's initial weights on its task only: no
    forgetting, no transfer, and T times the weights (`num_params`). `model` has ``classes_per_task``
    outputs (each network is its own head)."""

    def __init__(self, model, num_tasks, classes_per_task, learning_rate=1e-3):
        super().__init__(model, num_tasks, classes_per_task, "shared", learning_rate)
        self._initial = [np.array(v) for v in model.trainable_variables]
        self._weights = {}

    @property
    def num_params(self) -> int:
        return self.num_tasks * super().num_params

    def _load(self, values):
        for v, w in zip(self.model.trainable_variables, values):
            v.assign(w)

    def train_task(self, task, x, y, steps, batch_size=32, seed=0):
        self._load(self._initial)
        loss = super().train_task(task, x, y, steps, batch_size, seed)
        self._weights[int(task)] = [np.array(v) for v in self.model.trainable_variables]
        return loss

    def predict(self, task, x, batch_size=1000):
        if int(task) not in self._weights:
            raise ValueError(f"task {task} has no network yet: train it first.")
        self._load(self._weights[int(task)])
        return super().predict(task, x, batch_size)


class Multitask(_KerasLearner):
    """One network trained on all tasks at once (the upper bound): ``train_joint`` runs
    ``num_tasks·steps_per_task`` steps of `batch_size` images from every task (the same images in all as
    the sequential methods, and per task the same up to one image per step: see `train_joint`)."""

    def train_task(self, task, x, y, steps, batch_size=32, seed=0):
        raise TypeError("Multitask trains on all tasks at once: use train_joint(tasks, ...).")

    def train_joint(self, tasks: Sequence[Task], steps_per_task: int, batch_size: int = 32, seed: int = 0):
        """`len(tasks)·steps_per_task` steps; each batch of `batch_size` has ``batch_size // T`` images of
        every task, and one more of each of the first ``batch_size % T`` tasks (e.g. 128 images over 5
        tasks: 26, 26, 26, 25, 25), so a task sees at most ``steps`` images more than another."""
        t_count = len(tasks)
        if batch_size < t_count:
            raise ValueError(f"Multitask: batch_size={batch_size} must be at least the number of tasks ({t_count}).")
        _reset_optimizer(self.optimizer)
        step = self._train_step()
        total = t_count * int(steps_per_task)
        per = [batch_size // t_count + (1 if t < batch_size % t_count else 0) for t in range(t_count)]
        streams = [_batches(len(task.y_train), max(per[t], 1), total, seed + 101 * t) for t, task in enumerate(tasks)]
        loss = None
        for _ in range(total):
            xs, ys, ids = [], [], []
            for t, (task, stream) in enumerate(zip(tasks, streams)):
                idx = next(stream)[: per[t]]
                xs.append(task.x_train[idx])
                ys.append(task.y_train[idx])
                ids.append(np.full(len(idx), t, np.int32))
            loss = step(
                tf.constant(np.concatenate(xs), self._x_spec.dtype),
                tf.constant(np.concatenate(ys)),
                tf.constant(np.concatenate(ids)),
            )
        return None if loss is None else float(loss)


class HypernetworkLearner:
    """Von Oswald et al.'s task-conditioned hypernetwork trained with the output regulariser.

    While task t is learned the loss is the cross-entropy of the network ``generate([t])`` on the task's
    batch plus ``output_regularizer(generate([0..t-1]), saved, beta)``, with ``saved`` the generator's
    outputs for tasks 0..t-1 just before task t started. Trained: the generator's shared variables and
    task t's embedding (the other tasks' embeddings are held, when `embedding` names them).

    Args:
        target: the `hyperkeras.TargetNetwork` whose weights are generated (C = its output width).
        generate: ``task_ids [K] int32 -> params {name: [K, *shape]}`` in inference mode (deterministic).
        variables: the trainable variables of the generator (embeddings included).
        num_tasks: T.
        beta: β, the weight of the output regulariser.
        learning_rate: Adam's (its state is reset at every task).
        embedding: the variable ``[T, d]`` of the task embeddings, if separate: rows of other tasks than
            the present one get no update (von Oswald et al. train only the present task's embedding).
        num_params: generator size to report (default: the size of `variables`).
        lookahead: von Oswald et al.'s lookahead: the regulariser is evaluated, and differentiated, at
            ``Θ + ΔΘ`` instead of Θ, where ``ΔΘ = −learning_rate · ∇Θ CE`` is the step the task loss alone
            would take (the plain-gradient form of their ``use_sgd_change``; held constant), so the
            earlier tasks' outputs are protected against the move the present task is about to make. Costs
            one more generator pass and gradient per step.
    """

    def __init__(
        self,
        target,
        generate: Callable,
        variables,
        num_tasks: int,
        beta: float = 0.01,
        learning_rate: float = 1e-3,
        embedding=None,
        num_params: int | None = None,
        lookahead: bool = False,
    ):
        self.target = target
        self.generate = generate
        self.variables = list(variables)
        if not self.variables:
            raise ValueError("HypernetworkLearner: the generator has no trainable variables.")
        self.num_tasks = int(num_tasks)
        self.beta = float(beta)
        self.embedding = embedding
        self.lookahead = bool(lookahead)
        self.kind = target.output_kind
        self._x_spec = tf.TensorSpec([None, *target.input_shape], target.input_dtype)
        self._num_params = num_params
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.optimizer.build(self.variables)
        p = target.num_params
        self.saved = tf.Variable(tf.zeros([self.num_tasks, p]), trainable=False)
        self.mask = tf.Variable(tf.zeros([self.num_tasks]), trainable=False)
        self._step = None
        self._predict = None

    @classmethod
    def from_hypernetwork(cls, model, beta: float = 0.01, learning_rate: float = 1e-3, lookahead: bool = False):
        """The learner of a deterministic hypernetwork conditioned on task ids: a
        `hyperkeras.models.Hypernetwork` whose generator has ``noise_dim=0`` and ``num_conditions=T``
        (e.g. ``ChunkedGenerator.from_target(target, noise_dim=0, num_conditions=T, ...)``). Task t's
        weights are ``model.generate(noise [1, 0], condition=[t])``; the generator's variables (the task
        embedding table included) are trained here, by the learner's own optimizer (not ``model.fit``)."""
        gen = model.generator
        num_tasks = getattr(gen, "num_conditions", None)
        if not getattr(model, "conditional", False) or num_tasks is None:
            raise ValueError(
                "from_hypernetwork needs a Hypernetwork whose generator is conditioned on task ids "
                "(built with num_conditions=T)."
            )
        if int(model.noise_dim) != 0:
            raise ValueError(
                f"from_hypernetwork needs a deterministic generator (noise_dim=0), got noise_dim={model.noise_dim}."
            )

        def generate(task_ids):
            noise = model.sample_noise(tf.shape(task_ids)[0], 0)  # [K, 0]
            return model.generate(noise, training=False, canonical=False, condition=task_ids)

        embedding = getattr(getattr(gen, "condition_embedding", None), "embeddings", None)
        return cls(
            model.target,
            generate,
            model.generator_variables,
            int(num_tasks),
            beta=beta,
            learning_rate=learning_rate,
            embedding=embedding,
            lookahead=lookahead,
        )

    @property
    def num_params(self) -> int:
        """The generator's weights (embeddings included)."""
        if self._num_params is not None:
            return int(self._num_params)
        return int(sum(int(np.prod(v.shape)) for v in self.variables))

    def flat_weights(self, task_ids) -> tf.Tensor:
        """The generated weight vectors ``[K, P]`` of tasks `task_ids`."""
        return self.target.flatten(self.generate(tf.cast(task_ids, tf.int32)))

    def _task_loss(self, x, y, task):
        params = self.generate(tf.reshape(task, [1]))
        out = self.target.apply(params, x, training=False)[0]
        logits = tf.cast(probabilities.as_logits(out, self.kind), tf.float32)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

    def _regularizer(self):
        current = tf.cast(self.flat_weights(tf.range(self.num_tasks)), tf.float32)
        return output_regularizer(current, self.saved, self.beta, self.mask)

    def _mask_embedding(self, grads, task):
        """Zeroes the gradient rows of the other tasks' embeddings (only the present one is trained)."""
        if self.embedding is None:
            return grads
        keep = tf.one_hot(task, self.num_tasks)[:, None]
        return [
            g * tf.cast(keep, g.dtype) if v is self.embedding and g is not None else g
            for g, v in zip(grads, self.variables)
        ]

    def gradients(self, x, y, task):
        """``(grads, ce, reg)``: the gradient of the step's loss for every variable in `variables` (the
        other tasks' embedding rows zeroed), the task's cross-entropy and the regulariser. Without
        lookahead the gradient of ``CE(Θ) + reg(Θ)``; with it ``∇CE(Θ) + ∇reg(Θ + ΔΘ)``,
        ``ΔΘ = −lr · ∇CE(Θ)`` with the optimizer's learning rate (see the class docstring)."""
        if not self.lookahead:
            with tf.GradientTape() as tape:
                ce = self._task_loss(x, y, task)
                reg = self._regularizer()
                loss = ce + reg
            return self._mask_embedding(tape.gradient(loss, self.variables), task), ce, reg
        with tf.GradientTape() as tape:
            ce = self._task_loss(x, y, task)
        ce_grads = self._mask_embedding(tape.gradient(ce, self.variables), task)
        lr = self.optimizer.learning_rate  # the optimizer's own (one source of truth)
        moved = [(v, tf.identity(v), g) for v, g in zip(self.variables, ce_grads) if g is not None]
        for v, value, g in moved:  # to Θ + ΔΘ ...
            v.assign(value - tf.cast(lr, g.dtype) * g)
        with tf.GradientTape() as tape:
            reg = self._regularizer()
        reg_grads = self._mask_embedding(tape.gradient(reg, self.variables), task)
        for v, value, _ in moved:  # ... and back to exactly Θ
            v.assign(value)
        grads = [a if b is None else b if a is None else a + b for a, b in zip(ce_grads, reg_grads)]
        return grads, ce, reg

    def _train_step(self):
        if self._step is None:

            @tf.function(input_signature=[self._x_spec, _IDS, _TASK])  # one trace per learner
            def step(x, y, task):
                grads, ce, reg = self.gradients(x, y, task)
                self.optimizer.apply(grads, self.variables)
                return ce, reg

            self._step = step
        return self._step

    def train_task(self, task: int, x, y, steps: int, batch_size: int = 32, seed: int = 0):
        task = int(task)
        # The outputs for the earlier tasks, as they are now (before task `task`).
        self.saved.assign(tf.cast(self.flat_weights(tf.range(self.num_tasks)), tf.float32))
        self.mask.assign(tf.cast(tf.range(self.num_tasks) < task, tf.float32))
        _reset_optimizer(self.optimizer)
        step = self._train_step()
        x, y = np.asarray(x), np.asarray(y, np.int32)
        out = None
        for idx in _batches(len(y), batch_size, steps, seed):
            out = step(tf.constant(x[idx], self._x_spec.dtype), tf.constant(y[idx]), tf.constant(task, tf.int32))
        return None if out is None else float(out[0] + out[1])

    def after_task(self, task: int, x, y):
        pass

    def predict(self, task: int, x, batch_size: int = 1000) -> np.ndarray:
        """Probabilities ``[N, C]`` of the network generated for task `task`."""
        if self._predict is None:

            @tf.function(input_signature=[self._x_spec, _TASK])
            def predict(xb, task):
                out = self.target.apply(self.generate(tf.reshape(task, [1])), xb, training=False)[0]
                return probabilities.softmax(tf.cast(out, tf.float32), self.kind)

            self._predict = predict
        return np.concatenate(
            [
                self._predict(
                    tf.constant(np.asarray(x[s : s + batch_size]), self._x_spec.dtype), tf.constant(int(task), tf.int32)
                ).numpy()
                for s in range(0, len(x), batch_size)
            ]
        )


# --------------------------------------------------------------------------------------------- running
def evaluate_tasks(learner, tasks: Sequence[Task], upto: int | None = None) -> list:
    """Test accuracy of `learner` on each task (task id given), for tasks ``0..upto`` (default: all)."""
    upto = len(tasks) - 1 if upto is None else int(upto)
    return [
        float(np.mean(np.argmax(learner.predict(j, task.x_test), -1) == task.y_test))
        for j, task in enumerate(tasks[: upto + 1])
    ]


def run_sequence(
    learner, tasks: Sequence[Task], steps_per_task: int, batch_size: int = 32, seed: int = 0, callback=None
) -> dict:
    """Trains `learner` on `tasks` one after another and evaluates after each.

    Returns ``{"matrix": R, "average_accuracy": ..., "forgetting": ..., "final": R[-1]}`` with ``R[i][j]``
    the test accuracy on task j after training task i (None for j > i). `callback(i, row)` is called
    after each task (progress)."""
    matrix = []
    for i, task in enumerate(tasks):
        learner.train_task(i, task.x_train, task.y_train, steps_per_task, batch_size, seed + 1000 * i)
        learner.after_task(i, task.x_train, task.y_train)
        row = evaluate_tasks(learner, tasks, upto=i)
        matrix.append(row + [None] * (len(tasks) - i - 1))
        if callback is not None:
            callback(i, row)
    return {
        "matrix": matrix,
        "final": matrix[-1],
        "average_accuracy": average_accuracy(matrix),
        "forgetting": forgetting(matrix),
    }


def infer_task_by_entropy(learner, tasks: Sequence[Task], batch_size: int = 1000) -> dict:
    """HNET+ENT (von Oswald et al.): the task of each test image is not given but inferred as the task
    whose network predicts it with the lowest entropy; its prediction then counts. An image is right when
    the inferred task's predicted class is the image's class (an original label: `Task.classes`).

    Returns ``{"accuracy": [per task], "average_accuracy", "task_inference_accuracy": [per task]}``."""
    acc, inferred_right = [], []
    for j, task in enumerate(tasks):
        probs = np.stack([learner.predict(t, task.x_test, batch_size) for t in range(len(tasks))])  # [T, N, C]
        ent = probabilities.entropy(probs)  # [T, N]
        guess = np.argmin(ent, axis=0)
        n = np.arange(len(task.y_test))
        pred = np.argmax(probs[guess, n], axis=-1)
        pred_label = np.array([tasks[g].classes[p] for g, p in zip(guess, pred)])
        true_label = np.asarray(task.classes)[task.y_test]
        acc.append(float(np.mean(pred_label == true_label)))
        inferred_right.append(float(np.mean(guess == j)))
    return {"accuracy": acc, "average_accuracy": float(np.mean(acc)), "task_inference_accuracy": inferred_right}
