"""2-D convolution whose gradients run as forward convolutions: an optimisation of `tf.nn.convolution`.

TensorFlow differentiates a convolution with its ``Conv2DBackpropInput`` / ``Conv2DBackpropFilter``
kernels. For the small convolutions of hypernetwork targets they are slow on CPU: on a 2-core AVX2
machine (TF 2.21, oneDNN on) the two gradients of the Deutsch target's second convolution (32 → 16
channels, 5×5, 14×14, SAME, 32 images) ran at 0.38 and 0.33 of the fp32 matmul peak where its forward
convolution ran at 0.8. Both gradients of a stride-1 convolution are themselves convolutions:

- w.r.t. the input: the output gradient convolved with the kernel flipped in space and with its input and
  output channels swapped (for SAME padding and an odd kernel, again a SAME convolution);
- w.r.t. the kernel: a convolution whose "batch" is the input's channels and whose "channels" are the
  images — the input, transposed to ``[C_in, H, W, B]`` and padded like the forward pass, convolved
  (VALID) with the output gradient transposed to ``[H_out, W_out, B, C_out]`` as the filter, gives
  ``[C_in, kh, kw, C_out]``.

Written so, with TensorFlow's forward convolution, they measured 1.2-2.8x faster than the backprop
kernels on the SAME-padded shapes of this library's targets (Deutsch, ResNet-20, WRN;
`benchmarks/conv_gradients.py`). With VALID padding the input gradient is a "full" convolution (the
output gradient padded by the kernel size), which measured slower than TensorFlow's kernel (0.4-0.6x),
while the kernel gradient still measured 1.4-1.6x faster: there only the kernel gradient takes the
forward form. So `conv2d` takes this form only where an allow-list holds (`forward_form_applies`):
4-D NHWC input, stride 1, dilation 1, VALID padding or SAME padding with an odd kernel size,
float32/float64, static channel and kernel sizes; everywhere else it is `tf.nn.convolution` itself. The forward pass is the same op in
both cases (same result, bit for bit); the gradients agree with TensorFlow's to float32 rounding
(`tests/test_convolution.py`) and are differentiable again (they are made of convolutions).

Which form is faster depends on the CPU: on a 2-core AVX-512/AMX machine (the same TensorFlow) oneDNN's own
backprop kernels beat the forward form on every one of those shapes (0.29-0.94x, median 0.76; conv2 of the
Deutsch target at 1.2x the fp32 matmul peak). So by default `conv2d` takes the forward form only on the
CPUs where it was measured faster, x86-64 with AVX2 and without AVX-512 (`forward_form_pays`), and the
shape allow-list holds; ``conv2d(..., forward_form=True)`` takes it wherever the shapes allow, ``False`` never.
"""

from __future__ import annotations

import functools

import tensorflow as tf

_DTYPES = (tf.float32, tf.float64)


def _pair(value, name):
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 4:  # [1, s, s, 1] as tf.nn.conv2d takes it
        if value[0] != 1 or value[3] != 1:
            return (0, 0)  # not a plain NHWC stride: never allow-listed
        value = value[1:3]
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or 2 ints, got {value!r}.")
    return value


def forward_form_applies(inputs, kernel, strides=1, padding="SAME", dilations=1) -> bool:
    """True where `conv2d` runs its gradients as forward convolutions (the allow-list above)."""
    inputs_shape = tf.TensorShape(inputs.shape)
    kernel_shape = tf.TensorShape(kernel.shape)
    return bool(
        inputs_shape.rank == 4
        and kernel_shape.rank == 4
        and kernel_shape.is_fully_defined()
        and inputs_shape[-1] is not None
        and inputs_shape[-1] == kernel_shape[2]
        and tf.as_dtype(inputs.dtype) in _DTYPES
        and tf.as_dtype(kernel.dtype) == tf.as_dtype(inputs.dtype)
        and isinstance(padding, str)
        and (padding.upper() == "VALID" or (padding.upper() == "SAME" and kernel_shape[0] % 2 and kernel_shape[1] % 2))
        and _pair(strides, "strides") == (1, 1)
        and _pair(dilations, "dilations") == (1, 1)
    )


@functools.cache
def forward_form_pays() -> bool:
    """True on CPUs where the forward form measured faster than TensorFlow's backprop kernels: x86-64 with
    AVX2 and without AVX-512 (read from Linux's /proc/cpuinfo; False where it cannot be read). Measured
    with `benchmarks/conv_gradients.py`: 1.2-2.8x faster on an AVX2 machine, 0.29-0.94x on an AVX-512 one."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return _pays_on(flags)


def _pays_on(cpu_flags) -> bool:
    return "avx2" in cpu_flags and "avx512f" not in cpu_flags


def input_gradient(output_gradient, kernel):
    """Gradient of a stride-1 SAME convolution with an odd `kernel` w.r.t. its input, as a convolution:
    ``output_gradient`` [B, H, W, C_out] with the kernel flipped in space and its channels swapped."""
    flipped = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])
    return tf.nn.conv2d(output_gradient, flipped, strides=1, padding="SAME")


def kernel_gradient(inputs, output_gradient, kernel_shape, padding="SAME"):
    """Gradient of a stride-1 convolution (VALID, or SAME with an odd kernel) of `kernel_shape` w.r.t. the
    kernel, as a convolution over the batch: ``[kh, kw, C_in, C_out]``."""
    kh, kw = int(kernel_shape[0]), int(kernel_shape[1])
    pad_h, pad_w = ((kh - 1) // 2, (kw - 1) // 2) if padding == "SAME" else (0, 0)
    images_as_channels = tf.transpose(inputs, [3, 1, 2, 0])  # [C_in, H, W, B]
    gradient_as_filter = tf.transpose(output_gradient, [1, 2, 0, 3])  # [H, W, B, C_out]
    out = tf.nn.conv2d(
        images_as_channels,
        gradient_as_filter,
        strides=1,
        padding=[[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]],
    )  # [C_in, kh, kw, C_out]
    return tf.transpose(out, [1, 2, 0, 3])


@tf.custom_gradient
def _same_conv(inputs, kernel):
    outputs = tf.nn.conv2d(inputs, kernel, strides=1, padding="SAME")

    def gradient(output_gradient):
        return input_gradient(output_gradient, kernel), kernel_gradient(inputs, output_gradient, kernel.shape)

    return outputs, gradient


@tf.custom_gradient
def _valid_conv(inputs, kernel):
    outputs = tf.nn.conv2d(inputs, kernel, strides=1, padding="VALID")

    def gradient(output_gradient):
        grad_inputs = tf.raw_ops.Conv2DBackpropInput(  # TensorFlow's own kernel: faster here
            input_sizes=tf.shape(inputs),
            filter=kernel,
            out_backprop=output_gradient,
            strides=[1, 1, 1, 1],
            padding="VALID",
        )
        return grad_inputs, kernel_gradient(inputs, output_gradient, kernel.shape, "VALID")

    return outputs, gradient


def conv2d(inputs, kernel, strides=1, padding="SAME", dilations=1, forward_form=None):
    """``tf.nn.convolution(inputs, kernel, strides, padding, dilations)`` (NHWC), with its gradients as
    forward convolutions where `forward_form_applies` and (`forward_form` None, the default) on a CPU where
    that `forward_form_pays`; ``forward_form=True`` wherever `forward_form_applies`, False never. Otherwise
    exactly `tf.nn.convolution`."""
    inputs = tf.convert_to_tensor(inputs)
    kernel = tf.convert_to_tensor(kernel)
    wanted = forward_form_pays() if forward_form is None else bool(forward_form)
    if wanted and forward_form_applies(inputs, kernel, strides, padding, dilations):
        return (_same_conv if padding.upper() == "SAME" else _valid_conv)(inputs, kernel)
    return tf.nn.convolution(inputs, kernel, strides=strides, padding=padding, dilations=dilations)
