"""`KernelGenerator`: the two-layer linear hypernetwork of Ha, Dai & Le's static hypernetworks."""

from __future__ import annotations

import math
import secrets
import weakref

import keras
from keras import ops


def normalize_kernel_size(kernel_size, name: str = "kernel_size") -> tuple[int, ...]:
    """Returns `kernel_size` as a tuple of positive ints; None or () means "no spatial axes" (Dense)."""
    if kernel_size is None:
        return ()
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    try:
        out = tuple(int(k) for k in kernel_size)
    except TypeError:
        raise ValueError(f"{name} must be an int, a tuple of ints or None, got {kernel_size!r}.") from None
    if any(k <= 0 for k in out) or any(int(k) != k for k in kernel_size):
        raise ValueError(f"{name} must hold positive integers, got {kernel_size!r}.")
    return out


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


@keras.saving.register_keras_serializable(package="hyperkeras")
class KernelGenerator(keras.layers.Layer):
    """Generates a kernel tile from a layer embedding (Ha, Dai & Le, static hypernetwork, §3.1).

    From an embedding ``z ∈ R^{N_z}`` (``embedding_dim``) the generator makes one kernel tile of shape
    ``(*kernel_size, in_tile, out_tile)`` (Keras layout) in two linear steps:

    * for every input channel ``i`` of the tile: ``a_i = W_i z + B_i`` with ``W_i ∈ R^{d × N_z}``,
      ``B_i ∈ R^d`` (``d = hidden_dim``);
    * ``K_i = W_out a_i + B_out`` with ``W_out ∈ R^{(kh·kw·out_tile) × d}`` shared by all ``i``; ``K_i``
      reshaped to ``(kh, kw, out_tile)`` is the tile's slice for input channel ``i``.

    The weights are stored as ``input_kernel`` ``[N_z, in_tile·d]`` (column block ``i`` is ``W_iᵀ``),
    ``input_bias`` ``[in_tile·d]``, ``output_kernel`` ``[d, kh·kw·out_tile]`` (columns in
    ``(kh, kw, out)`` row-major order) and ``output_bias`` ``[kh·kw·out_tile]``.

    One generator is meant to be shared by many `HyperConv2D` / `HyperDense` layers (pass the same
    instance); each of them owns only its embeddings (one per tile). Inside a `.keras` file a shared
    generator is stored once and restored as one shared object (Keras's object-sharing scope);
    `keras.models.clone_model` gives the cloned layers one new shared generator (`generator_from_config`).

    With the default initializers, a unit-variance embedding gives ``a_i`` of unit variance and a
    kernel tile with He variance ``2 / (kh·kw·in_tile)``.

    Args:
        embedding_dim: ``N_z``, size of each layer/tile embedding (paper: 64 for the Wide ResNet, 4 for
            the MNIST example).
        in_tile: input channels of one tile (paper: 16).
        out_tile: output channels of one tile (paper: 16).
        kernel_size: spatial size of the tile, an int or a tuple (paper: 3 for WRN, 7 for MNIST);
            ``None`` or ``()`` makes a ``[in_tile, out_tile]`` matrix tile for `HyperDense`.
        hidden_dim: ``d``, size of each ``a_i``; defaults to ``embedding_dim`` as in the paper.
        input_kernel_initializer: initializer of ``W_i`` (default LeCun normal, fan-in ``N_z``).
        output_kernel_initializer: initializer of ``W_out``; ``None`` (default) scales a truncated
            normal so that the generated tile has He variance ``2 / (kh·kw·in_tile)``.
        bias_initializer: initializer of ``B_i`` and ``B_out``.
        kernel_regularizer: regularizer of ``W_i`` and ``W_out``.
        bias_regularizer: regularizer of ``B_i`` and ``B_out``.
        **kwargs: `keras.layers.Layer` arguments (``name``, ``dtype``, ``trainable``).

    Call arguments:
        embeddings: tensor ``[..., embedding_dim]``.

    Returns:
        Tensor ``[..., *kernel_size, in_tile, out_tile]``.

    Example:

    >>> gen = KernelGenerator(embedding_dim=64, in_tile=16, out_tile=16, kernel_size=3)
    >>> gen(keras.random.normal([5, 64])).shape
    (5, 3, 3, 16, 16)

    Reference:
        Ha, Dai & Le, "HyperNetworks", arXiv:1609.09106 (2016), §3.1 and Appendix A.
    """

    def __init__(
        self,
        embedding_dim: int = 64,
        in_tile: int = 16,
        out_tile: int = 16,
        kernel_size=(3, 3),
        hidden_dim: int | None = None,
        input_kernel_initializer="lecun_normal",
        output_kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embedding_dim = _positive_int(embedding_dim, "embedding_dim")
        self.in_tile = _positive_int(in_tile, "in_tile")
        self.out_tile = _positive_int(out_tile, "out_tile")
        self.kernel_size = normalize_kernel_size(kernel_size)
        self.hidden_dim = self.embedding_dim if hidden_dim is None else _positive_int(hidden_dim, "hidden_dim")
        self._hidden_dim_arg = hidden_dim
        self.input_kernel_initializer = keras.initializers.get(input_kernel_initializer)
        self._output_kernel_initializer_arg = output_kernel_initializer
        if output_kernel_initializer is None:
            self.output_kernel_initializer = keras.initializers.VarianceScaling(
                scale=2.0 / (math.prod(self.kernel_size) * self.in_tile), mode="fan_in", distribution="truncated_normal"
            )
        else:
            self.output_kernel_initializer = keras.initializers.get(output_kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        # Identifies this generator in the configs of the layers using it (see `serialize_generator`).
        # Random rather than id(self): an id is reused once the object is freed.
        self.sharing_key = secrets.randbits(62)

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """Shape of one generated tile: ``(*kernel_size, in_tile, out_tile)``."""
        return (*self.kernel_size, self.in_tile, self.out_tile)

    def build(self, input_shape=None):
        if input_shape is not None and input_shape[-1] is not None and int(input_shape[-1]) != self.embedding_dim:
            raise ValueError(
                f"{self.name}: embeddings must have last dimension embedding_dim={self.embedding_dim}, "
                f"got shape {tuple(input_shape)}."
            )
        n_out = math.prod(self.kernel_size) * self.out_tile
        self.input_kernel = self.add_weight(
            name="input_kernel",
            shape=(self.embedding_dim, self.in_tile * self.hidden_dim),
            initializer=self.input_kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.input_bias = self.add_weight(
            name="input_bias",
            shape=(self.in_tile * self.hidden_dim,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(self.hidden_dim, n_out),
            initializer=self.output_kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.output_bias = self.add_weight(
            name="output_bias",
            shape=(n_out,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
        )

    def call(self, embeddings):
        lead = ops.shape(embeddings)[:-1]
        z = ops.reshape(embeddings, (-1, self.embedding_dim))
        a = ops.matmul(z, self.input_kernel) + self.input_bias  # [T, in·d]
        a = ops.reshape(a, (-1, self.hidden_dim))  # [T·in, d]
        k = ops.matmul(a, self.output_kernel) + self.output_bias  # [T·in, kh·kw·out]
        k = ops.reshape(k, (-1, self.in_tile, *self.kernel_size, self.out_tile))
        nd = len(self.kernel_size)
        # [T, in, *ks, out] -> [T, *ks, in, out]
        k = ops.transpose(k, (0, *range(2, 2 + nd), 1, 2 + nd))
        return ops.reshape(k, (*lead, *self.tile_shape))

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], *self.tile_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding_dim": self.embedding_dim,
                "in_tile": self.in_tile,
                "out_tile": self.out_tile,
                "kernel_size": list(self.kernel_size),
                "hidden_dim": self._hidden_dim_arg,
                "input_kernel_initializer": keras.initializers.serialize(self.input_kernel_initializer),
                "output_kernel_initializer": (
                    None
                    if self._output_kernel_initializer_arg is None
                    else keras.initializers.serialize(self.output_kernel_initializer)
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            }
        )
        return config


def num_tiles(channels: int, tile: int) -> int:
    """Number of tiles of size `tile` covering `channels` (the last one cropped if it overhangs)."""
    return -(-int(channels) // int(tile))


def assemble_kernel(generator: KernelGenerator, embeddings, in_channels: int, out_channels: int):
    """Generates and tiles a full kernel ``(*kernel_size, in_channels, out_channels)``.

    ``embeddings`` has shape ``[n_in, n_out, N_z]``; tile ``(i, j)`` fills input channels
    ``i·in_tile … (i+1)·in_tile − 1`` and output channels ``j·out_tile … (j+1)·out_tile − 1``.
    Channels beyond `in_channels` / `out_channels` (when they are not multiples of the tile) are cropped.
    """
    n_in, n_out = num_tiles(in_channels, generator.in_tile), num_tiles(out_channels, generator.out_tile)
    tiles = generator(embeddings)  # [n_in, n_out, *ks, ti, to]
    nd = len(generator.kernel_size)
    # -> [*ks, n_in, ti, n_out, to]
    perm = (*range(2, 2 + nd), 0, 2 + nd, 1, 3 + nd)
    kernel = ops.reshape(
        ops.transpose(tiles, perm), (*generator.kernel_size, n_in * generator.in_tile, n_out * generator.out_tile)
    )
    if n_in * generator.in_tile != in_channels or n_out * generator.out_tile != out_channels:
        kernel = kernel[..., :in_channels, :out_channels]
    return kernel


def add_tile_weights(layer, in_channels: int, out_channels: int):
    """Creates a hyper layer's weights: one embedding per (input tile, output tile) and the bias.

    Sets ``layer.embeddings`` ``[tiles_in, tiles_out, embedding_dim]`` and ``layer.bias`` (or None), using the
    layer's ``embedding_*`` and ``bias_*`` initializers, regularizers and constraints.
    """
    generator = layer.generator
    if not generator.built:
        generator.build((None, generator.embedding_dim))
    layer.embeddings = layer.add_weight(
        name="embeddings",
        shape=(
            num_tiles(in_channels, generator.in_tile),
            num_tiles(out_channels, generator.out_tile),
            generator.embedding_dim,
        ),
        initializer=layer.embedding_initializer,
        regularizer=layer.embedding_regularizer,
        constraint=layer.embedding_constraint,
    )
    layer.bias = None
    if layer.use_bias:
        layer.bias = layer.add_weight(
            name="bias",
            shape=(out_channels,),
            initializer=layer.bias_initializer,
            regularizer=layer.bias_regularizer,
            constraint=layer.bias_constraint,
        )


# The private generator a layer makes when it is given none: tiles of at most the paper's 16 × 16
# channels, never larger than the layer's kernel, and an embedding of one dimension per tile,
# between 4 (the paper's MNIST generator) and 64 (the paper's Wide ResNet generator).
DEFAULT_MAX_TILE = 16
DEFAULT_MIN_EMBEDDING_DIM = 4
DEFAULT_MAX_EMBEDDING_DIM = 64
# A private generator (with its embeddings) has at most this fraction of the weights of the kernel it makes.
DEFAULT_MAX_PARAM_FRACTION = 0.5


def private_generator_params(in_channels: int, out_channels: int, embedding_dim: int, tile_shape, kernel_size=()):
    """Weights of a layer's private `KernelGenerator` (``hidden_dim = embedding_dim``) plus its tile embeddings."""
    in_tile, out_tile = tile_shape
    k = math.prod(kernel_size)
    d = embedding_dim
    generator = d * in_tile * d + in_tile * d + d * k * out_tile + k * out_tile
    return generator + num_tiles(in_channels, in_tile) * num_tiles(out_channels, out_tile) * d


def default_generator_shape(in_channels: int, out_channels: int, embedding_dim=None, tile_shape=None, kernel_size=()):
    """``(embedding_dim, (in_tile, out_tile))`` of a layer's private generator; given values are kept.

    Defaults: ``in_tile = min(16, in_channels)``, ``out_tile = min(16, out_channels)``, and ``embedding_dim``
    the largest ``N_z`` up to ``clip(number of tiles, 4, 64)`` whose generator and embeddings together have at
    most half the weights of the kernel they make (`private_generator_params`), so that a hypernetwork layer
    compresses by default; 1 where none does (a kernel too small to compress, e.g. 4 → 4 dense: the layer then
    has more weights than the plain one). E.g. a 16 → 8 channel 3×3 conv (1,152 kernel weights) gets one
    16 × 8 tile from a 3-dimensional embedding (483 weights); a 160 → 160 3×3 conv gets 10 × 10 tiles of
    16 × 16 from 64-dimensional embeddings (the paper's Wide ResNet configuration, 82,320 for 230,400); a
    1,024 → 32 dense layer 64 × 2 tiles with N_z = 27 (16,000 for 32,768).
    """
    if tile_shape is None:
        tile_shape = (min(DEFAULT_MAX_TILE, int(in_channels)), min(DEFAULT_MAX_TILE, int(out_channels)))
    in_tile, out_tile = tile_shape
    if embedding_dim is None:
        tiles = num_tiles(in_channels, in_tile) * num_tiles(out_channels, out_tile)
        budget = DEFAULT_MAX_PARAM_FRACTION * int(in_channels) * int(out_channels) * math.prod(kernel_size)
        embedding_dim = min(DEFAULT_MAX_EMBEDDING_DIM, max(DEFAULT_MIN_EMBEDDING_DIM, tiles))
        while embedding_dim > 1 and (
            private_generator_params(in_channels, out_channels, embedding_dim, tile_shape, kernel_size) > budget
        ):
            embedding_dim -= 1
    return embedding_dim, (in_tile, out_tile)


def check_generator_args(layer_name: str, generator, embedding_dim, tile_shape, kernel_size):
    """Validates a hyper layer's generator arguments; returns ``(generator, embedding_dim, tile_shape)``.

    ``generator`` is returned as given (None: the layer makes a private one when it is built, see
    `default_generator_shape`), or deserialized from a config dict (`generator_from_config`).
    """
    if isinstance(generator, dict):
        generator = generator_from_config(layer_name, generator)
    if tile_shape is not None:
        if len(tuple(tile_shape)) != 2:
            raise ValueError(f"{layer_name}: tile_shape must be (in_tile, out_tile), got {tile_shape!r}.")
        tile_shape = tuple(_positive_int(int(t), f"{layer_name}: tile_shape") for t in tile_shape)
    if embedding_dim is not None:
        embedding_dim = _positive_int(embedding_dim, f"{layer_name}: embedding_dim")
    if generator is None:
        return None, embedding_dim, tile_shape
    if not isinstance(generator, KernelGenerator):
        raise TypeError(
            f"{layer_name}: generator must be a hyperkeras.layers.KernelGenerator, got {type(generator).__name__}."
        )
    if generator.kernel_size != tuple(kernel_size):
        raise ValueError(
            f"{layer_name}: the generator makes tiles of kernel_size {generator.kernel_size}, but the layer needs "
            f"kernel_size {tuple(kernel_size)}."
        )
    if embedding_dim is not None and embedding_dim != generator.embedding_dim:
        raise ValueError(
            f"{layer_name}: embedding_dim={embedding_dim} disagrees with the generator's {generator.embedding_dim}."
        )
    if tile_shape is not None and tile_shape != (generator.in_tile, generator.out_tile):
        raise ValueError(
            f"{layer_name}: tile_shape={tile_shape} disagrees with the generator's {(generator.in_tile, generator.out_tile)}."
        )
    return generator, embedding_dim, tile_shape


def private_generator(in_channels: int, out_channels: int, embedding_dim, tile_shape, kernel_size) -> KernelGenerator:
    """A new generator for one layer, sized by `default_generator_shape` where not given."""
    embedding_dim, (in_tile, out_tile) = default_generator_shape(
        in_channels, out_channels, embedding_dim, tile_shape, kernel_size
    )
    return KernelGenerator(embedding_dim=embedding_dim, in_tile=in_tile, out_tile=out_tile, kernel_size=kernel_size)


def serialize_generator(generator: KernelGenerator) -> dict:
    """Serializes a layer's generator so that sharing survives saving, loading and cloning.

    The config carries ``shared_object_id`` = the generator's `sharing_key`: layers that share one
    generator carry the same id. Keras 3 saves and loads `.keras` files inside an object-sharing scope,
    where an object config with a ``shared_object_id`` is deserialized once and later configs with the
    same id get that same object; its weights are stored once (under the first layer). (Keras marks
    objects as shared only when it meets the same config dict twice, which a config nested in a
    layer's `get_config` never is, so the id is set here, always.) Outside Keras's scope, e.g. in
    `keras.models.clone_model`, `generator_from_config` keeps copies shared.
    """
    config = dict(keras.saving.serialize_keras_object(generator))  # a copy: Keras may edit the dict it recorded
    config["shared_object_id"] = int(generator.sharing_key)
    return config


def generator_config(generator, embedding_dim, tile_shape) -> dict:
    """The ``generator``, ``embedding_dim`` and ``tile_shape`` entries of a hyper layer's config.

    A private generator not made yet (layer not built) is stored as its arguments, as given.
    """
    if generator is None:
        return {
            "generator": None,
            "embedding_dim": embedding_dim,
            "tile_shape": None if tile_shape is None else list(tile_shape),
        }
    return {
        "generator": serialize_generator(generator),
        "embedding_dim": generator.embedding_dim,
        "tile_shape": [generator.in_tile, generator.out_tile],
    }


# shared_object_id -> (weak reference to the generator last made from that config, names of the layers given it)
_copies: dict = {}


def generator_from_config(layer_name: str, config: dict) -> KernelGenerator:
    """The generator for a layer being made from its config (`from_config`, `clone_model`, loading).

    Layers made one after the other from the configs of layers that shared one generator share one
    new generator — as `keras.models.clone_model` makes them: each layer once, without a sharing scope.
    A layer name met a second time for the same generator starts a new generator, so two clones of a
    model (or two `from_config` calls with one layer's config) get independent generators. Inside a
    `.keras` load, Keras's own sharing scope returns the one generator for every layer anyway.

    Limit: nothing tells this function where one clone ends, only the repeated names. A layer copied
    alone by hand (``HyperConv2D.from_config(b.get_config())``) and kept, then a `clone_model` of its
    model, puts the lone copy and the clone's first layer in one round: the clone's layers do not all
    share, and ``clone.set_weights(model.get_weights())`` fails with Keras's weight-count error.
    Copy such models with `keras.models.clone_model` only (or drop the lone copy first).
    """
    key = config.get("shared_object_id")
    if key is None:
        return keras.saving.deserialize_keras_object(config)
    for k in [k for k, (ref, _) in _copies.items() if ref() is None]:
        del _copies[k]  # the copies of that generator are gone
    ref, names = _copies.get(key, (None, set()))
    generator = ref() if ref is not None else None
    if generator is None or layer_name in names:
        generator = keras.saving.deserialize_keras_object(config)
        names = set()
        _copies[key] = (weakref.ref(generator), names)
    names.add(layer_name)
    return generator
