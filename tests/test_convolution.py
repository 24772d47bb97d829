"""`hyperkeras.convolution.conv2d` against TensorFlow's own convolution and its registered gradients."""

import numpy as np
import pytest
import tensorflow as tf

from hyperkeras import convolution


def _tensors(rng, batch, h, w, c_in, c_out, kh, kw, dtype="float32"):
    x = tf.constant(rng.randn(batch, h, w, c_in).astype(dtype))
    k = tf.constant(rng.randn(kh, kw, c_in, c_out).astype(dtype))
    return x, k


def _gradients(conv, x, k, weight):
    """d/dx and d/dk of a non-linear scalar of the convolution (so the output gradient is not constant)."""
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        loss = tf.reduce_sum(tf.sin(conv(x, k)) * weight)
    return tape.gradient(loss, [x, k])


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("dtype,rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_gradients_match_tensorflows_on_random_shapes(dtype, rtol, padding):
    rng = np.random.RandomState(0)
    for _ in range(12):
        kh, kw = rng.choice([1, 3, 5, 7] if padding == "SAME" else [1, 2, 3, 4, 5], size=2)
        batch, h, w = rng.randint(1, 6), rng.randint(kh, 16), rng.randint(kw, 16)
        c_in, c_out = rng.randint(1, 9), rng.randint(1, 9)
        x, k = _tensors(rng, batch, h, w, c_in, c_out, kh, kw, dtype)
        assert convolution.forward_form_applies(x, k, padding=padding)
        ours = convolution.conv2d(x, k, padding=padding, forward_form=True)
        plain = tf.nn.conv2d(x, k, strides=1, padding=padding)
        np.testing.assert_array_equal(ours.numpy(), plain.numpy())  # the forward pass is the same op
        weight = tf.constant(rng.randn(*plain.shape).astype(dtype))
        got = _gradients(lambda a, b: convolution.conv2d(a, b, padding=padding, forward_form=True), x, k, weight)
        want = _gradients(lambda a, b: tf.nn.conv2d(a, b, 1, padding), x, k, weight)
        for g, r in zip(got, want):
            scale = float(tf.reduce_max(tf.abs(r)))
            np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=0, atol=rtol * scale * max(1, c_in * kh * kw))


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_gradients_inside_a_tf_function_match_a_finite_difference(padding):
    rng = np.random.RandomState(1)
    x, k = _tensors(rng, 2, 6, 5, 3, 4, 3, 3, "float64")
    weight = tf.constant(rng.randn(*tf.nn.conv2d(x, k, 1, padding).shape))
    grad_x, grad_k = tf.function(
        lambda a, b: _gradients(lambda u, v: convolution.conv2d(u, v, padding=padding, forward_form=True), a, b, weight)
    )(x, k)

    def loss(a, b):
        return float(tf.reduce_sum(tf.sin(tf.nn.conv2d(a, b, 1, padding)) * weight))

    eps = 1e-6
    for tensor, grad, other in ((x, grad_x, "x"), (k, grad_k, "k")):
        flat = tensor.numpy().ravel()
        for i in rng.choice(flat.size, size=5, replace=False):
            up, down = flat.copy(), flat.copy()
            up[i] += eps
            down[i] -= eps
            up, down = up.reshape(tensor.shape), down.reshape(tensor.shape)
            if other == "x":
                numeric = (loss(up, k) - loss(down, k)) / (2 * eps)
            else:
                numeric = (loss(x, up) - loss(x, down)) / (2 * eps)
            assert grad.numpy().ravel()[i] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_second_order_gradients_match_tensorflows(padding):
    rng = np.random.RandomState(2)
    x, k = _tensors(rng, 2, 7, 7, 3, 2, 3, 3, "float64")

    def hessian_vector(conv):
        with tf.GradientTape() as outer:
            outer.watch(k)
            with tf.GradientTape() as inner:
                inner.watch([x, k])
                loss = tf.reduce_sum(tf.square(conv(x, k)) * tf.cos(conv(x, k)))
            gx, gk = inner.gradient(loss, [x, k])
            scalar = tf.reduce_sum(gx * x) + tf.reduce_sum(gk * gk)
        return outer.gradient(scalar, k)

    got = hessian_vector(lambda a, b: convolution.conv2d(a, b, padding=padding, forward_form=True))
    want = hessian_vector(lambda a, b: tf.nn.conv2d(a, b, 1, padding))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs,x_shape,k_shape,dtype",
    [
        (dict(strides=2), (2, 8, 8, 3), (3, 3, 3, 4), "float32"),
        (dict(strides=(1, 2), padding="VALID"), (2, 8, 8, 3), (3, 3, 3, 4), "float32"),
        (dict(dilations=2), (2, 8, 8, 3), (3, 3, 3, 4), "float32"),
        (dict(), (2, 8, 8, 3), (2, 2, 3, 4), "float32"),  # even kernel: asymmetric SAME padding
        (dict(), (2, 8, 8, 3), (3, 3, 3, 4), "float16"),
        (dict(), (2, 8, 3), (3, 3, 4), "float32"),  # 1-D
    ],
)
def test_outside_the_allow_list_it_is_tensorflows_convolution(kwargs, x_shape, k_shape, dtype):
    rng = np.random.RandomState(3)
    x = tf.constant(rng.randn(*x_shape).astype(dtype))
    k = tf.constant(rng.randn(*k_shape).astype(dtype))
    assert not convolution.forward_form_applies(x, k, **kwargs)
    args = dict(strides=1, padding="SAME", dilations=1) | kwargs
    with tf.GradientTape() as tape:
        tape.watch(k)
        ours = convolution.conv2d(x, k, **kwargs, forward_form=True)
    with tf.GradientTape() as tape2:
        tape2.watch(k)
        plain = tf.nn.convolution(x, k, **args)
    np.testing.assert_array_equal(ours.numpy(), plain.numpy())
    np.testing.assert_array_equal(tape.gradient(ours, k).numpy(), tape2.gradient(plain, k).numpy())


def test_a_dynamic_batch_is_allowed_and_a_dynamic_channel_count_is_not():
    k = tf.zeros([3, 3, 4, 2])
    assert convolution.forward_form_applies(tf.TensorSpec([None, 8, 8, 4]), k)
    assert convolution.forward_form_applies(tf.TensorSpec([None, None, None, 4]), k)
    assert not convolution.forward_form_applies(tf.TensorSpec([None, 8, 8, None]), k)
    assert not convolution.forward_form_applies(tf.TensorSpec([2, 8, 8, 4]), tf.TensorSpec([3, 3, None, 2]))

    rng = np.random.RandomState(4)
    x, k = _tensors(rng, 3, 9, 9, 4, 2, 3, 3)
    fn = tf.function(
        lambda a, b: _gradients(convolution.conv2d, a, b, 1.0),
        input_signature=[tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([3, 3, 4, 2])],
    )
    for g, r in zip(fn(x, k), _gradients(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"), x, k, 1.0)):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "flags, pays",
    [
        ("fpu sse4_2 avx avx2 fma", True),
        ("avx avx2 fma avx512f avx512bw amx_bf16", False),
        ("sse4_2 avx", False),
        ("", False),
    ],
)
def test_the_forward_form_is_the_default_only_on_avx2_cpus_without_avx512(flags, pays):
    assert convolution._pays_on(flags.split()) is pays


@pytest.mark.parametrize("pays", [True, False])
def test_the_default_form_follows_the_cpu_and_an_explicit_choice_wins(monkeypatch, pays):
    monkeypatch.setattr(convolution, "forward_form_pays", lambda: pays)
    x = tf.random.normal([2, 6, 6, 3])
    k = tf.random.normal([3, 3, 3, 4])

    def gradient_ops(**kwargs):
        @tf.function
        def f(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                y = convolution.conv2d(a, b, **kwargs)
            return tape.gradient(y, [a, b])

        return {op.type for op in f.get_concrete_function(x, k).graph.get_operations()}

    tensorflows = {"Conv2DBackpropInput", "Conv2DBackpropFilter"}
    assert tensorflows.isdisjoint(gradient_ops()) is pays
    assert tensorflows.isdisjoint(gradient_ops(forward_form=True))
    assert tensorflows <= gradient_ops(forward_form=False)
