"""Target architectures buildable by name: the papers' networks and a zoo beyond them.

`build_model(name, **kwargs)` returns a plain, built `keras.Model`; `register_target(name)` adds your own.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

# ---------------------------------------------------------------------- architectures from the papers
_BUILDERS: dict[str, Callable[..., keras.Model]] = {}


def register_target(name: str):
    """Decorator: registers a function ``(**kwargs) -> keras.Model`` under `name` for `build_model`.

    A name is registered once: a second registration raises ValueError (it would silently replace the
    first, and every `build_model(name)` after it would build another architecture)."""

    def wrap(fn):
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ValueError(
                f"target {name!r} is already registered (by {_BUILDERS[name].__module__}.{_BUILDERS[name].__qualname__}); "
                "choose another name."
            )
        _BUILDERS[name] = fn
        return fn

    return wrap


def available_targets() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs) -> keras.Model:
    """Builds a registered target architecture (see `available_targets()`) as a plain keras.Model."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown target {name!r}; available: {available_targets()}.")
    return _BUILDERS[name](**kwargs)


@register_target("deutsch_mnist")
def deutsch_mnist(input_shape=(28, 28, 1), num_classes=10, seed=None) -> keras.Model:
    """Deutsch (2018) Table 1: conv 5×5×32 SAME + ReLU + max-pool 2, conv 5×5×16 SAME + ReLU +
    max-pool 2, dense 8 + ReLU, dense 10 (logits). 20,018 weights for 28×28×1 inputs."""
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 5, padding="same", activation="relu", kernel_initializer=init, name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(16, 5, padding="same", activation="relu", kernel_initializer=init, name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(8, activation="relu", kernel_initializer=init, name="dense1"),
            keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"),
        ],
        name="deutsch_mnist",
    )


@register_target("mlp")
def mlp(input_shape=(64,), hidden=(64, 32), num_classes=10, activation="relu", dropout=0.0, seed=None):
    """A plain multi-layer perceptron (Flatten, then Dense layers; optional dropout after each)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input(input_shape), keras.layers.Flatten(name="flatten")]
    for i, width in enumerate(hidden):
        layers.append(keras.layers.Dense(width, activation=activation, kernel_initializer=init, name=f"dense{i + 1}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"))
    return keras.Sequential(layers, name="mlp")


# ---------------------------------------------------------------------- HyperGAN (Ratzlaff & Fuxin) targets
def _hypergan_stack(name, input_shape, convs, denses, num_classes, negative_slope, dropout, seed):
    """Conv (VALID) + leaky ReLU + 2×2 max-pool blocks, Flatten, Dense + leaky ReLU layers, Dense logits.
    `dropout` > 0 adds a Dropout after every pooling / hidden dense layer (MC-dropout baseline)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input(input_shape)]
    for i, (filters, size) in enumerate(convs):
        layers += [
            keras.layers.Conv2D(filters, size, padding="valid", kernel_initializer=init, name=f"conv{i + 1}"),
            keras.layers.LeakyReLU(negative_slope, name=f"lrelu{i + 1}"),
            keras.layers.MaxPooling2D(2, name=f"pool{i + 1}"),
        ]
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{i + 1}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    for i, width in enumerate(denses):
        layers += [
            keras.layers.Dense(width, kernel_initializer=init, name=f"linear{i + 1}"),
            keras.layers.LeakyReLU(negative_slope, name=f"lrelu_linear{i + 1}"),
        ]
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_linear{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"))
    return keras.Sequential(layers, name=name)


@register_target("hypergan_mnist")
def hypergan_mnist(input_shape=(28, 28, 1), num_classes=10, negative_slope=0.01, dropout=0.0, seed=None):
    """HyperGAN Table 5 (MNIST): conv 32×1×5×5, leaky ReLU, 2×2 max-pool, conv 32×32×5×5, leaky ReLU,
    2×2 max-pool, linear 512×10. VALID convolutions: 28 → 24 → 12 → 8 → 4, so the flattened features
    are 4·4·32 = 512. 31,594 weights. The paper does not give the leaky-ReLU slope; 0.01 (PyTorch's
    default) is used."""
    return _hypergan_stack(
        "hypergan_mnist", input_shape, [(32, 5), (32, 5)], [], num_classes, negative_slope, dropout, seed
    )


@register_target("hypergan_cifar10")
def hypergan_cifar10(input_shape=(32, 32, 3), num_classes=10, negative_slope=0.01, dropout=0.0, seed=None):
    """HyperGAN Table 6 (CIFAR-10): conv 16×3×3×3, conv 32×16×3×3, conv 64×32×3×3 (each VALID + leaky
    ReLU + 2×2 max-pool: 32 → 30 → 15 → 13 → 6 → 4 → 2), linear 256×128 + leaky ReLU, linear 128×10.
    The table prints conv 3 as "32 × 64 × 3 × 3"; only 64 output channels from 32 inputs are
    consistent with conv 2's 32 outputs and linear 1's 256 = 2·2·64 inputs. 57,770 weights
    (the paper's "50,000+")."""
    return _hypergan_stack(
        "hypergan_cifar10", input_shape, [(16, 3), (32, 3), (64, 3)], [128], num_classes, negative_slope, dropout, seed
    )


@register_target("hypergan_regression")
def hypergan_regression(input_shape=(1,), hidden=100, outputs=1, dropout=0.0, seed=None):
    """HyperGAN §4.3 (after Hernández-Lobato & Adams): one hidden layer of 100 ReLU units, linear output."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [
        keras.Input(input_shape),
        keras.layers.Dense(hidden, activation="relu", kernel_initializer=init, name="hidden"),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    layers.append(keras.layers.Dense(outputs, kernel_initializer=init, name="output"))
    return keras.Sequential(layers, name="hypergan_regression")


# ---------------------------------------------------------------------- zoo beyond the papers
class _Seeds:
    """Distinct initialiser seeds per layer from one base seed (a seeded Keras initialiser reused across
    layers would give every same-shaped kernel the same values). ``seed=None`` leaves them unseeded."""

    def __init__(self, seed):
        self.seed = seed
        self.count = 0

    def __call__(self, kind="glorot_uniform"):
        cls = {
            "glorot_uniform": keras.initializers.GlorotUniform,
            "he_normal": keras.initializers.HeNormal,
            "orthogonal": keras.initializers.Orthogonal,
            "uniform": keras.initializers.RandomUniform,
        }[kind]
        self.count += 1
        return cls(seed=None if self.seed is None else int(self.seed) * 1000 + self.count)


@register_target("resnet20")
def resnet20(input_shape=(32, 32, 3), num_classes=10, width=16, blocks_per_stage=3, dropout=0.0, seed=None):
    """CIFAR-style residual network (He et al. 2016, §4.2): ResNet-20 with the default arguments.

    A 3×3 convolution with `width` filters, then three stages of `blocks_per_stage` basic blocks with
    `width`, 2·`width` and 4·`width` filters (the first block of stages 2 and 3 halves the spatial size
    with stride 2), global average pooling and a dense layer of logits. A basic block is
    conv 3×3 – BN – ReLU – conv 3×3 – BN, added to the shortcut, then ReLU. Where the shape changes the
    shortcut is a 1×1 convolution with stride 2 followed by BN (the paper's option B; its CIFAR
    experiments used option A, a parameter-free zero-padded identity). Convolutions have no bias (BN
    follows each one). With ``blocks_per_stage=3`` there are 6·3 + 2 = 20 weighted layers on the main path.

    Args:
        input_shape: shape of one image, channels last, e.g. ``(32, 32, 3)`` or ``(28, 28, 1)``.
        num_classes: number of logits.
        width: filters of the first stage (16 in the paper).
        blocks_per_stage: basic blocks per stage n (depth 6n + 2: 3 → ResNet-20, 5 → ResNet-32).
        dropout: if > 0, a Dropout layer of this rate before the logits (MC-dropout baseline).
        seed: seed of the weight initialisers (He normal for convolutions, Glorot uniform for the
            dense layer); None draws them at random.

    Returns:
        a built functional `keras.Model` ``[B, *input_shape] -> [B, num_classes]`` logits. Layer names:
        ``stem_conv``, ``stem_bn``, ``stage{s}_block{b}_conv{1,2}``, ``..._bn{1,2}``,
        ``..._proj_conv``/``..._proj_bn`` (shortcut), ``pool``, ``logits``. With the defaults and
        32×32×3 inputs: 272,474 trainable weights (the generated ones) and 1,568 BN moving statistics.

    Example:

    ```python
    model = hyperkeras.targets.build_model("resnet20", input_shape=(28, 28, 1))
    target = hyperkeras.TargetNetwork(model)
    logits = target.apply(params, images, training=True)   # [K, B, 10], per-network batch statistics
    ```

    Reference:
        He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016), §4.2.
    """
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"resnet20 expects images (height, width, channels); got input_shape={input_shape!r}.")
    if int(width) < 1 or int(blocks_per_stage) < 1 or int(num_classes) < 1:
        raise ValueError(
            f"width, blocks_per_stage and num_classes must be >= 1; got {width}, {blocks_per_stage}, {num_classes}."
        )
    init = _Seeds(seed)

    def conv(filters, size, strides, name):
        return keras.layers.Conv2D(
            filters,
            size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=init("he_normal"),
            name=name,
        )

    def bn(name):
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)

    inputs = keras.Input(tuple(input_shape), name="images")
    h = conv(width, 3, 1, "stem_conv")(inputs)
    h = bn("stem_bn")(h)
    h = keras.layers.ReLU(name="stem_relu")(h)
    channels = int(width)
    for stage in range(3):
        filters = int(width) * 2**stage
        for block in range(int(blocks_per_stage)):
            p = f"stage{stage + 1}_block{block + 1}"
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = h
            r = conv(filters, 3, strides, f"{p}_conv1")(h)
            r = bn(f"{p}_bn1")(r)
            r = keras.layers.ReLU(name=f"{p}_relu1")(r)
            r = conv(filters, 3, 1, f"{p}_conv2")(r)
            r = bn(f"{p}_bn2")(r)
            if strides != 1 or channels != filters:
                shortcut = conv(filters, 1, strides, f"{p}_proj_conv")(shortcut)
                shortcut = bn(f"{p}_proj_bn")(shortcut)
            h = keras.layers.Add(name=f"{p}_add")([shortcut, r])
            h = keras.layers.ReLU(name=f"{p}_relu2")(h)
            channels = filters
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    if dropout:
        h = keras.layers.Dropout(dropout, name="dropout")(h)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=init(), name="logits")(h)
    return keras.Model(inputs, outputs, name="resnet20")


@register_target("gru_text")
def gru_text(
    seq_len=32,
    vocab_size=100,
    num_classes=100,
    embed_dim=16,
    conv_filters=32,
    kernel_size=3,
    gru_units=32,
    dropout=0.0,
    seed=None,
):
    """Token-id sequence classifier: Embedding → Conv1D (causal, ReLU) → GRU (last state) → Dense logits.

    Args:
        seq_len: tokens per example.
        vocab_size: number of token ids (inputs must lie in ``[0, vocab_size)``).
        num_classes: number of logits (``vocab_size`` for next-token prediction).
        embed_dim: size of the token embedding.
        conv_filters: filters of the 1-D convolution.
        kernel_size: width of the convolution (causal padding: output t sees tokens ≤ t).
        gru_units: units of the GRU; its final state feeds the logits.
        dropout: if > 0, a Dropout layer of this rate before the logits (MC-dropout baseline).
        seed: seed of the weight initialisers; None draws them at random.

    Returns:
        a built functional `keras.Model` ``int32 [B, seq_len] -> [B, num_classes]`` logits with layers
        ``embedding``, ``conv``, ``gru``, ``logits``. 12,804 weights with the defaults.

    Example:

    ```python
    model = hyperkeras.targets.build_model("gru_text", seq_len=32, vocab_size=len(vocab), num_classes=len(vocab))
    target = hyperkeras.TargetNetwork(model)   # embedding and GRU weights are `target.plain_specs`
    ```

    Reference:
        Cho et al., "Learning Phrase Representations using RNN Encoder–Decoder for Statistical Machine
        Translation" (EMNLP 2014) for the GRU.
    """
    init = _Seeds(seed)
    inputs = keras.Input((int(seq_len),), dtype="int32", name="tokens")
    h = keras.layers.Embedding(vocab_size, embed_dim, embeddings_initializer=init("uniform"), name="embedding")(inputs)
    h = keras.layers.Conv1D(
        conv_filters, kernel_size, padding="causal", activation="relu", kernel_initializer=init(), name="conv"
    )(h)
    h = keras.layers.GRU(gru_units, kernel_initializer=init(), recurrent_initializer=init("orthogonal"), name="gru")(h)
    if dropout:
        h = keras.layers.Dropout(dropout, name="dropout")(h)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=init(), name="logits")(h)
    return keras.Model(inputs, outputs, name="gru_text")


@keras.saving.register_keras_serializable(package="hyperkeras")
class PositionEmbedding(keras.layers.Layer):
    """Learned position embedding: adds a trainable vector per position to a sequence of features.

    Args:
        sequence_length: the largest number of positions (the input's sequence axis may be shorter:
            the first positions are used).
        initializer: initialiser of the ``[sequence_length, features]`` table.
        **kwargs: standard `keras.layers.Layer` arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: ``[B, T, features]`` with ``T <= sequence_length``; returns ``inputs + table[:T]``.

    Example:

    ```python
    tokens = keras.layers.Embedding(100, 32)(ids)              # [B, 16, 32]
    h = PositionEmbedding(sequence_length=16)(tokens)           # same shape, position-aware
    ```

    Reference:
        Vaswani et al., "Attention Is All You Need" (2017), §3.5 (learned variant, as BERT/GPT).
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if int(sequence_length) < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length!r}.")
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"PositionEmbedding expects [B, T, features] with known features, got {input_shape}.")
        if input_shape[1] is not None and input_shape[1] > self.sequence_length:
            raise ValueError(f"PositionEmbedding: {input_shape[1]} positions > sequence_length={self.sequence_length}.")
        self.embeddings = self.add_weight(
            shape=(self.sequence_length, int(input_shape[-1])), initializer=self.initializer, name="embeddings"
        )

    def call(self, inputs):
        length = keras.ops.shape(inputs)[1]
        table = keras.ops.cast(self.embeddings[:length], inputs.dtype)
        return inputs + table[None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"sequence_length": self.sequence_length, "initializer": keras.initializers.serialize(self.initializer)}
        )
        return config


@register_target("transformer_text")
def transformer_text(
    seq_len=32,
    vocab_size=100,
    num_classes=100,
    embed_dim=32,
    num_heads=2,
    key_dim=16,
    ff_dim=64,
    dropout=0.0,
    seed=None,
):
    """Token-id sequence classifier with one Transformer encoder block (post-norm, as Vaswani et al.).

    Token embedding + learned position embedding → multi-head self-attention, residual add,
    LayerNormalization → feed-forward (Dense ReLU, Dense), residual add, LayerNormalization → global
    average pooling over positions → Dense logits. Attention is bidirectional (no mask).

    Args:
        seq_len: tokens per example.
        vocab_size: number of token ids (inputs must lie in ``[0, vocab_size)``).
        num_classes: number of logits (``vocab_size`` for next-token prediction).
        embed_dim: model width d.
        num_heads: attention heads.
        key_dim: size of each head's queries and keys.
        ff_dim: hidden width of the feed-forward network.
        dropout: if > 0, a Dropout layer of this rate before the logits (MC-dropout baseline).
        seed: seed of the weight initialisers; None draws them at random.

    Returns:
        a built functional `keras.Model` ``int32 [B, seq_len] -> [B, num_classes]`` logits with layers
        ``token_embedding``, ``position_embedding``, ``attention``, ``attention_add``, ``attention_norm``,
        ``ffn_hidden``, ``ffn_output``, ``ffn_add``, ``ffn_norm``, ``pool``, ``logits``. 16,068 weights
        with the defaults.

    Example:

    ```python
    model = hyperkeras.targets.build_model("transformer_text", seq_len=32, vocab_size=80, num_classes=80)
    target = hyperkeras.TargetNetwork(model)   # e.g. "attention/query/kernel" in target.plain_specs
    ```

    Reference:
        Vaswani et al., "Attention Is All You Need" (NeurIPS 2017), §3.
    """
    init = _Seeds(seed)
    inputs = keras.Input((int(seq_len),), dtype="int32", name="tokens")
    h = keras.layers.Embedding(vocab_size, embed_dim, embeddings_initializer=init("uniform"), name="token_embedding")(
        inputs
    )
    h = PositionEmbedding(seq_len, initializer=init("uniform"), name="position_embedding")(h)
    attended = keras.layers.MultiHeadAttention(num_heads, key_dim, kernel_initializer=init(), name="attention")(h, h)
    h = keras.layers.Add(name="attention_add")([h, attended])
    h = keras.layers.LayerNormalization(epsilon=1e-5, name="attention_norm")(h)
    f = keras.layers.Dense(ff_dim, activation="relu", kernel_initializer=init(), name="ffn_hidden")(h)
    f = keras.layers.Dense(embed_dim, kernel_initializer=init(), name="ffn_output")(f)
    h = keras.layers.Add(name="ffn_add")([h, f])
    h = keras.layers.LayerNormalization(epsilon=1e-5, name="ffn_norm")(h)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    if dropout:
        h = keras.layers.Dropout(dropout, name="dropout")(h)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=init(), name="logits")(h)
    return keras.Model(inputs, outputs, name="transformer_text")
