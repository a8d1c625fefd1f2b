"""The trainer's layers, loss, optimisers, model, checkpoints and training loop."""

import cuda_host
import numpy as np
import pytest
from conftest import assert_close, synthetic_digits

import numba_dsconv.cpu
from numba_dsconv import nn, reference

GRAD_RTOL = 1e-6  # central differences in float64 with eps 1e-6


def _numeric_grad(values, evaluate, eps=1e-6, limit=None, rng=None):
    """Central differences of ``evaluate()`` with respect to ``values`` (changed in place and restored).

    With ``limit``, only that many randomly chosen entries are checked; returns (indices, gradients).
    """
    flat = values.reshape(-1)
    indices = np.arange(flat.size) if limit is None or flat.size <= limit else rng.choice(flat.size, limit, False)
    grads = []
    for i in indices:
        old = flat[i]
        flat[i] = old + eps
        plus = evaluate()
        flat[i] = old - eps
        minus = evaluate()
        flat[i] = old
        grads.append((plus - minus) / (2 * eps))
    return indices, np.array(grads)


def _check_close(analytic, numeric, what):
    scale = max(np.abs(numeric).max(), 1e-3)
    err = np.abs(analytic - numeric).max() / scale
    assert err < GRAD_RTOL, f"{what}: max error {err:.2e} relative to {scale:.2e}"


def check_layer(layer, x, rng, limit=None):
    """Finite-difference check of a layer's input and parameter gradients for loss = <layer(x), g>."""
    upstream = rng.standard_normal(layer.forward(x, training=True).shape)

    def loss():
        return float((layer.forward(x, training=True) * upstream).sum())

    for p in layer.parameters().values():
        p.grad[...] = 0
    layer.forward(x, training=True)
    grad_x = layer.backward(upstream)
    indices, numeric = _numeric_grad(x, loss, limit=limit, rng=rng)
    _check_close(grad_x.reshape(-1)[indices], numeric, "input")
    for name, p in layer.parameters().items():
        indices, numeric = _numeric_grad(p.value, loss, limit=limit, rng=rng)
        _check_close(p.grad.reshape(-1)[indices], numeric, name)


def _layers(rng):
    f64 = {"rng": rng, "dtype": np.float64}
    return {
        "depthwise": (nn.DepthwiseConv2d(2, 3, (3, 2), stride=(2, 1), padding="same", dilation=(1, 2), **f64),
                      (2, 2, 7, 6)),
        "pointwise": (nn.PointwiseConv2d(3, 4, **f64), (2, 3, 4, 5)),
        "separable": (nn.SeparableConv2d(3, 2, 3, stride=2, padding=2, dilation=2, **f64), (2, 3, 7, 7)),
        "relu": (nn.ReLU(), (2, 3, 4, 5)),
        "batchnorm": (nn.BatchNorm2d(3, dtype=np.float64), (4, 3, 3, 2)),
        "batchnorm-relu": (nn.BatchNorm2d(3, relu=True, dtype=np.float64), (4, 3, 3, 2)),
        "pool": (nn.GlobalAvgPool2d(), (2, 3, 4, 5)),
        "linear": (nn.Linear(5, 3, **f64), (4, 5)),
    }


@pytest.mark.parametrize("name", list(_layers(np.random.default_rng(0))))
def test_layer_gradients_by_finite_differences(name):
    rng = np.random.default_rng(7)
    layer, shape = _layers(rng)[name]
    if isinstance(layer, nn.BatchNorm2d):  # non-trivial scale and shift
        layer.weight.value[...] = rng.uniform(0.5, 2.0, layer.weight.value.shape)
        layer.bias.value[...] = rng.standard_normal(layer.bias.value.shape)
    x = rng.standard_normal(shape)
    if name == "relu":
        x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    if name == "batchnorm-relu":  # both sides of the ReLU are exercised
        y = layer.forward(x, training=True)
        assert (y > 0).any() and (y == 0).any()
    check_layer(layer, x, rng)


def test_conv_layers_backward_match_the_references():
    rng = np.random.default_rng(3)
    layer = nn.DepthwiseConv2d(3, 2, 3, stride=2, padding=((1, 0), (2, 1)), dilation=2, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 3, 9, 8))
    y = layer.forward(x, training=True)
    g = rng.standard_normal(y.shape)
    opts = layer.options
    assert_close(y, reference.depthwise_conv2d(x, layer.weight.value, layer.bias.value, **opts), np.float64)
    gx = layer.backward(g)
    assert_close(gx, reference.depthwise_conv2d_grad_input(g, layer.weight.value, x.shape, **opts), np.float64)
    assert_close(layer.weight.grad, reference.depthwise_conv2d_grad_weight(g, x, layer.weight.value.shape, **opts),
                 np.float64)
    assert_close(layer.bias.grad, reference.conv2d_grad_bias(g), np.float64)

    pw = nn.PointwiseConv2d(3, 5, rng=rng, dtype=np.float32)
    x32 = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    g32 = rng.standard_normal((2, 5, 4, 4)).astype(np.float32)
    pw.forward(x32, training=True)
    gx32 = pw.backward(g32)
    assert_close(gx32, reference.pointwise_conv2d_grad_input(g32, pw.weight.value), np.float32)
    assert_close(pw.weight.grad, reference.pointwise_conv2d_grad_weight(g32, x32), np.float32)
    assert_close(pw.bias.grad, reference.conv2d_grad_bias(g32), np.float32)


@pytest.mark.parametrize("fused", [False, True], ids=["separate-halves", "fused"])
def test_separable_layer_equals_its_two_halves(monkeypatch, fused):
    """The layer's one fused operation against its depthwise and pointwise halves run as layers; gradients
    accumulate over two backward passes; the first layer of a model returns no input gradient."""
    monkeypatch.setattr(numba_dsconv.cpu.pointwise, "PER_IMAGE_PRODUCTS", fused)
    rng = np.random.default_rng(4)
    layer = nn.SeparableConv2d(4, 6, 3, stride=2, padding=1, dilation=1, rng=rng, dtype=np.float64)
    for p in layer.parameters().values():
        p.value[...] = rng.standard_normal(p.value.shape)
    x = rng.standard_normal((3, 4, 9, 10))
    y = layer.forward(x, training=True)
    g = rng.standard_normal(y.shape)
    gx = layer.backward(g)
    layer.forward(x, training=True)
    assert layer.backward(g, need_input_grad=False) is None
    halves = (layer.depthwise, layer.pointwise)
    accumulated = {name: p.grad.copy() for name, p in layer.parameters().items()}
    for p in layer.parameters().values():
        p.grad[...] = 0
    h = layer.depthwise.forward(x, training=True)
    assert_close(y, layer.pointwise.forward(h, training=True), np.float64)
    assert_close(gx, halves[0].backward(halves[1].backward(g)), np.float64)
    for name, p in layer.parameters().items():
        assert_close(accumulated[name], 2 * p.grad, np.float64)


def _batchnorm_reference(x, gamma, beta, eps, g):
    """Plain float64 batch norm forward and backward (autograd by hand, term by term)."""
    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    y = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    m = x.shape[0] * x.shape[2] * x.shape[3]
    dxhat = g * gamma[None, :, None, None]
    dvar = (dxhat * (x - mean) * -0.5 * (var + eps) ** -1.5).sum(axis=axes, keepdims=True)
    dmean = (-dxhat / np.sqrt(var + eps)).sum(axis=axes, keepdims=True) + dvar * (-2 * (x - mean)).mean(
        axis=axes, keepdims=True)
    dx = dxhat / np.sqrt(var + eps) + dvar * 2 * (x - mean) / m + dmean / m
    return y, dx, (g * xhat).sum(axis=axes), g.sum(axis=axes)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_matches_reference_and_tracks_running_statistics(dtype, relu):
    rng = np.random.default_rng(5)
    bn = nn.BatchNorm2d(4, momentum=0.25, relu=relu, dtype=dtype)
    bn.weight.value[...] = rng.uniform(0.5, 2, 4)
    bn.bias.value[...] = rng.standard_normal(4)
    x = (rng.standard_normal((3, 4, 5, 6)) * 3 + 10).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    y = bn.forward(x, training=True)
    gx = bn.backward(g)
    ry, _, _, _ = _batchnorm_reference(x.astype(np.float64), bn.weight.value.astype(np.float64),
                                       bn.bias.value.astype(np.float64), bn.eps, g.astype(np.float64))
    g_bn = g.astype(np.float64)
    if relu:  # the ReLU after the batch norm: its output clipped, its gradient masked
        g_bn = np.where(ry > 0, g_bn, 0.0)
        ry = np.maximum(ry, 0.0)
        assert (ry == 0).any() and (ry > 0).any()
    _, rdx, rdgamma, rdbeta = _batchnorm_reference(x.astype(np.float64), bn.weight.value.astype(np.float64),
                                                   bn.bias.value.astype(np.float64), bn.eps, g_bn)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for got, want in ((y, ry), (gx, rdx), (bn.weight.grad, rdgamma), (bn.bias.grad, rdbeta)):
        assert got.dtype == dtype
        assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want)
    x64 = x.astype(np.float64)
    count = x.size // 4
    np.testing.assert_allclose(bn.running_mean, 0.25 * x64.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.75 + 0.25 * x64.var(axis=(0, 2, 3)) * count / (count - 1),
                               rtol=1e-12)
    # Evaluation uses the running statistics, not the batch's.
    expected = (x64 - bn.running_mean[None, :, None, None]) / np.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    expected = expected * bn.weight.value[None, :, None, None] + bn.bias.value[None, :, None, None]
    if relu:
        expected = np.maximum(expected, 0.0)
    np.testing.assert_allclose(bn.forward(x, training=False), expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((5, 4)) * 30  # large values: the log-sum-exp must stay finite
    labels = np.array([0, 3, 1, 1, 2])
    loss = nn.SoftmaxCrossEntropy()
    value = loss.forward(logits, labels)
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    assert value == pytest.approx(-log_probs[np.arange(5), labels].mean(), rel=1e-12)
    _, numeric = _numeric_grad(logits, lambda: loss.forward(logits, labels))
    loss.forward(logits, labels)
    _check_close(loss.backward().reshape(-1), numeric, "logits")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        loss.forward(logits, np.array([0, 4, 1, 1, 2]))
    with pytest.raises(ValueError, match="expected"):
        loss.forward(logits, labels[:3])


@pytest.mark.parametrize("batch_norm", [True, False])
def test_whole_model_gradient_by_finite_differences(batch_norm):
    rng = np.random.default_rng(11)
    model = nn.dscnn(seed=3, dtype="float64", batch_norm=batch_norm)
    x = rng.standard_normal((3, 1, 12, 12))
    labels = np.array([1, 4, 7])
    loss = nn.SoftmaxCrossEntropy()

    def evaluate():
        return loss.forward(model.forward(x, training=True), labels)

    evaluate()
    for p in model.parameters().values():
        p.grad[...] = 0
    grad_x = model.backward(loss.backward(), need_input_grad=True)
    checked = 0
    for name, p in model.parameters().items():
        indices, numeric = _numeric_grad(p.value, evaluate, limit=3, rng=rng)
        _check_close(p.grad.reshape(-1)[indices], numeric, name)
        checked += len(indices)
    indices, numeric = _numeric_grad(x, evaluate, limit=6, rng=rng)
    _check_close(grad_x.reshape(-1)[indices], numeric, "input")
    assert checked > 30


def test_gradients_accumulate_until_zeroed():
    rng = np.random.default_rng(0)
    model = nn.dscnn(seed=0, dtype="float64")
    optimizer = nn.Adam(model.parameters())
    x = rng.standard_normal((2, 1, 8, 8))
    loss = nn.SoftmaxCrossEntropy()
    grads = []
    for _ in range(2):
        loss.forward(model.forward(x, training=True), np.array([0, 1]))
        model.backward(loss.backward(), need_input_grad=False)
        grads.append({k: p.grad.copy() for k, p in model.parameters().items()})
    for k in grads[0]:
        np.testing.assert_allclose(grads[1][k], 2 * grads[0][k], rtol=1e-12, atol=1e-300)
    optimizer.zero_grad()
    assert all(not p.grad.any() for p in model.parameters().values())


def test_backward_before_forward_is_an_error():
    layer = nn.PointwiseConv2d(2, 2, rng=np.random.default_rng(0))
    layer.forward(np.zeros((1, 2, 2, 2), np.float32), training=False)  # evaluation keeps nothing
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((1, 2, 2, 2), np.float32))


def test_optimisers_follow_their_update_rules():
    rng = np.random.default_rng(1)
    value = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(3)]

    p = nn.Parameter(value.copy())
    sgd = nn.SGD({"w": p}, lr=0.1, momentum=0.9, weight_decay=0.01)
    w, v = value.copy(), np.zeros(6)
    for g in grads:
        p.grad[...] = g
        sgd.step()
        v = 0.9 * v + g + 0.01 * w
        w = w - 0.1 * v
    np.testing.assert_allclose(p.value, w, rtol=1e-14)

    p = nn.Parameter(value.copy())
    adam = nn.Adam({"w": p}, lr=0.01, betas=(0.8, 0.9), eps=1e-6)
    w, m, s = value.copy(), np.zeros(6), np.zeros(6)
    for t, g in enumerate(grads, start=1):
        p.grad[...] = g
        adam.step()
        m = 0.8 * m + 0.2 * g
        s = 0.9 * s + 0.1 * g * g
        w = w - 0.01 * (m / (1 - 0.8 ** t)) / (np.sqrt(s / (1 - 0.9 ** t)) + 1e-6)
    np.testing.assert_allclose(p.value, w, rtol=1e-12)
    with pytest.raises(ValueError, match="lr must be positive"):
        nn.Adam({"w": p}, lr=0)


def test_cosine_schedule():
    assert nn.cosine_lr(0, 100, 1.0) == 1.0
    assert nn.cosine_lr(50, 100, 1.0) == pytest.approx(0.5)
    assert nn.cosine_lr(100, 100, 1.0, final_lr=0.1) == pytest.approx(0.1)
    assert nn.cosine_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert nn.cosine_lr(10, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)


def test_model_shapes_and_devices():
    model = nn.dscnn(seed=0)
    logits = model.predict(np.zeros((2, 1, 28, 28), np.float32))
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    names = list(model.parameters())
    assert names[0] == "stem.weight" and "block3.depthwise.weight" in names and names[-1] == "head.bias"
    if not cuda_host.available()[0]:
        with pytest.raises(ValueError, match="no usable GPU|GPU backend"):
            nn.dscnn(device="cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        nn.dscnn(device="tpu")
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.dscnn(dtype="float16")


def _train(model, optimizer, dataset, rng, epochs):
    mean, std = nn.pixel_statistics(dataset.train_images)
    stats = []
    for _ in range(epochs):
        stats.append(nn.train_epoch(model, optimizer, dataset.train_images, dataset.train_labels, batch_size=32,
                                    rng=rng, mean=mean, std=std, max_shift=1))
    return stats


def test_short_seeded_training_run_learns_and_repeats_exactly():
    dataset = synthetic_digits(train=480, test=200, seed=0)
    mean, std = nn.pixel_statistics(dataset.train_images)
    runs = []
    for _ in range(2):
        model = nn.dscnn(seed=0)
        optimizer = nn.Adam(model.parameters(), lr=5e-3)
        stats = _train(model, optimizer, dataset, np.random.default_rng(0), epochs=3)
        predictions = nn.predict(model, dataset.test_images, mean=mean, std=std)
        runs.append(([s.loss for s in stats], float((predictions == dataset.test_labels).mean())))
    losses, accuracy = runs[0]
    assert accuracy >= 0.9, f"test accuracy {accuracy:.3f} after 3 epochs on synthetic digits"
    assert losses[-1] < 0.5 * losses[0]
    assert runs[0] == runs[1]  # same seed, same device: same numbers, bit for bit


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    dataset = synthetic_digits(train=96, test=32, seed=1)
    # Two epochs straight through ...
    model = nn.dscnn(seed=4)
    optimizer = nn.Adam(model.parameters(), lr=3e-3)
    _train(model, optimizer, dataset, np.random.default_rng(9), epochs=2)
    # ... against one epoch, a checkpoint, a fresh process's worth of objects, and the second epoch.
    first = nn.dscnn(seed=4)
    first_opt = nn.Adam(first.parameters(), lr=3e-3)
    rng = np.random.default_rng(9)
    _train(first, first_opt, dataset, rng, epochs=1)
    path = tmp_path / "model.npz"
    nn.save_checkpoint(path, first, first_opt, state={"rng": rng.bit_generator.state, "note": "one epoch"})
    second = nn.dscnn(seed=123)  # different initial weights: all must come from the file
    second_opt = nn.Adam(second.parameters(), lr=3e-3)
    state = nn.load_checkpoint(path, second, second_opt)
    assert state["note"] == "one epoch"
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = state["rng"]
    _train(second, second_opt, dataset, resumed_rng, epochs=1)
    for (name, a), b in zip(model.parameters().items(), second.parameters().values(), strict=True):
        np.testing.assert_array_equal(a.value, b.value, err_msg=name)
    for name, buffer in model.buffers().items():
        np.testing.assert_array_equal(buffer, second.buffers()[name], err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no temporary files left

    loaded = nn.load_model(path)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), first.predict(x))


def test_bad_checkpoints_are_rejected_without_changing_the_model(tmp_path):
    model = nn.dscnn(seed=0)
    before = {k: p.value.copy() for k, p in model.parameters().items()}

    def unchanged():
        return all(np.array_equal(before[k], p.value) for k, p in model.parameters().items())

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a numba_dsconv checkpoint"):
        nn.load_checkpoint(garbage, model)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a numba_dsconv checkpoint"):
        nn.load_checkpoint(foreign, model)
    with pytest.raises(FileNotFoundError):
        nn.load_checkpoint(tmp_path / "missing.npz", model)

    other = tmp_path / "other.npz"
    nn.save_checkpoint(other, nn.dscnn(seed=1, batch_norm=False))
    with pytest.raises(ValueError, match="does not fit this model"):
        nn.load_checkpoint(other, model)
    wider = nn.dscnn(seed=1, num_classes=12)
    nn.save_checkpoint(other, wider)
    with pytest.raises(ValueError, match=r"'head.weight' has shape \(12, 128\), the model needs \(10, 128\)"):
        nn.load_checkpoint(other, model)
    nn.save_checkpoint(other, nn.dscnn(seed=1))
    with pytest.raises(ValueError, match="no optimiser state"):
        nn.load_checkpoint(other, model, nn.Adam(model.parameters()))
    assert unchanged()

    future = tmp_path / "future.npz"
    with np.load(other) as archive:
        arrays = dict(archive)
    arrays["__version__"] = np.array(99)
    np.savez(future, **arrays)
    with pytest.raises(ValueError, match="format version 99"):
        nn.load_checkpoint(future, model)
    assert unchanged()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    model = nn.dscnn(seed=0)
    nn.save_checkpoint(path, model)
    original = path.read_bytes()

    def failing_savez(handle, **arrays):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        nn.save_checkpoint(path, nn.dscnn(seed=1))
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_a_non_finite_loss_stops_training_before_the_update():
    model = nn.dscnn(seed=0)
    optimizer = nn.Adam(model.parameters())
    model.parameters()["head.bias"].value[3] = np.inf  # every logit row gets an infinite entry: loss NaN
    before = {k: p.value.copy() for k, p in model.parameters().items()}
    images = np.zeros((4, 28, 28), np.uint8)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        nn.train_step(model, optimizer, nn.SoftmaxCrossEntropy(), images, np.arange(4), mean=0.1, std=0.3)
    for k, p in model.parameters().items():
        np.testing.assert_array_equal(p.value, before[k])
    assert optimizer.steps == 0


def test_a_bare_npy_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="bare .npy array"):
        nn.load_checkpoint(path, nn.dscnn(seed=0))
