"""TransformerEncoder.from_keras on real KerasHub layers (JAX backend): float32, Keras' int8 mode and its
mixed_bfloat16, on every golden case, against Keras' own output; load(); bad inputs raising."""

import json
import os

import numpy as np
import pytest
import transformer_encoder as te

from conftest import golden_cases, read_safetensors, write_safetensors

os.environ.setdefault("KERAS_BACKEND", "jax")
if os.environ.get("TE_REQUIRE_KERAS"):
    import keras  # noqa: F401  (CI: keras must be there)
    import keras_hub
else:
    keras = pytest.importorskip("keras")
    keras_hub = pytest.importorskip("keras_hub")

CASES = golden_cases()


def _case(path):
    t, meta = read_safetensors(path)
    cfg = json.loads(meta["config"])
    if cfg.get("activation") == "gelu_approximate":
        pytest.skip("gelu_approximate is a Python function in Keras, not a config string")
    return t, meta, cfg


def _keras_layer(t, cfg, dtype=None):
    if dtype is not None:
        cfg = dict(cfg, dtype=dtype)
    layer = keras_hub.layers.TransformerEncoder.from_config(cfg)
    x = t["inputs"]
    layer.build(x.shape)
    prefix = layer.path + "/"
    for w in layer.weights:
        w.assign(t["weights/" + w.path[len(prefix):]])
    return layer


def _masks(t):
    return t.get("padding_mask"), t.get("attention_mask")


def _call_keras(layer, t):
    pm, am = _masks(t)
    kw = {}
    if pm is not None:
        kw["padding_mask"] = pm
    if am is not None:
        kw["attention_mask"] = am
    return np.asarray(layer(t["inputs"], **kw), dtype=np.float64)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_float32_equals_keras(path):
    t, meta, cfg = _case(path)
    layer = _keras_layer(t, cfg)
    want = _call_keras(layer, t)
    enc = te.TransformerEncoder.from_keras(layer)
    assert enc.precision == "fp32"
    got = enc(t["inputs"], *_masks(t))
    assert got.dtype == np.float32 and got.shape == t["inputs"].shape
    err = np.abs(got - want).max()
    assert err <= float(meta["atol_outputs"]), (err, meta["atol_outputs"])


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_int8_equals_keras(path):
    t, meta, cfg = _case(path)
    if "atol_int8" not in meta:
        pytest.skip("no int8 reference in this case")
    layer = _keras_layer(t, cfg)
    x = keras.Input(shape=t["inputs"].shape[1:], batch_size=t["inputs"].shape[0])
    pm, am = _masks(t)
    inputs, kw = [x], {}
    if pm is not None:
        kw["padding_mask"] = keras.Input(shape=pm.shape[1:], batch_size=pm.shape[0], dtype="uint8")
        inputs.append(kw["padding_mask"])
    if am is not None:
        kw["attention_mask"] = keras.Input(shape=am.shape[1:], batch_size=am.shape[0], dtype="uint8")
        inputs.append(kw["attention_mask"])
    model = keras.Model(inputs, layer(x, **kw))
    model.quantize("int8")
    feed = [t["inputs"]] + [m for m in (pm, am) if m is not None]
    want = np.asarray(model(feed), dtype=np.float64)
    enc = te.TransformerEncoder.from_keras(layer)
    assert enc.precision == "int8"
    err = np.abs(enc(t["inputs"], pm, am) - want).max()
    assert err <= float(meta["atol_int8"]), (err, meta["atol_int8"])


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_mixed_bfloat16_within_keras_error(path):
    t, meta, cfg = _case(path)
    layer = _keras_layer(t, cfg, dtype="mixed_bfloat16")
    keras_err = np.abs(_call_keras(layer, t) - t["outputs_f64"]).max()
    enc = te.TransformerEncoder.from_keras(layer)
    assert enc.precision == "bf16"
    err = np.abs(enc(t["inputs"], *_masks(t)) - t["outputs_f64"]).max()
    assert err <= 1.25 * keras_err, (err, keras_err)


def test_load_equals_from_keras(tmp_path):
    t, meta, cfg = _case(CASES[0])
    layer = _keras_layer(t, cfg)
    prefix = layer.path + "/"
    tensors = {w.path[len(prefix):]: np.asarray(w.numpy(), np.float32) for w in layer.weights}
    f = tmp_path / "layer.safetensors"
    write_safetensors(f, tensors, {"config": json.dumps(layer.get_config())})
    a = te.TransformerEncoder.load(f)(t["inputs"], *_masks(t))
    b = te.TransformerEncoder.from_keras(layer)(t["inputs"], *_masks(t))
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    # A float layer quantized at load runs Keras' int8 mode.
    assert te.TransformerEncoder.load(f, precision="int8").precision == "int8"


def test_bad_input_raises(tmp_path):
    t, meta, cfg = _case(CASES[0])
    layer = _keras_layer(t, cfg)
    enc = te.TransformerEncoder.from_keras(layer)
    x = t["inputs"]
    b, s, h = x.shape
    with pytest.raises(ValueError, match="rank 3"):
        enc(x[0])
    with pytest.raises(ValueError, match="hidden"):
        enc(np.zeros((b, s, h + 1), np.float32))
    with pytest.raises(ValueError, match="padding_mask"):
        enc(x, np.ones((b, s + 1), np.uint8))
    with pytest.raises(TypeError, match="padding_mask"):
        enc(x, np.ones((b, s), np.complex64))
    with pytest.raises(ValueError, match="not a safetensors"):
        (tmp_path / "junk").write_bytes(b"junk")
        te.TransformerEncoder.load(tmp_path / "junk")
    with pytest.raises(ValueError, match="path"):
        te.TransformerEncoder.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="build"):
        te.TransformerEncoder.from_keras(keras_hub.layers.TransformerEncoder(intermediate_dim=8, num_heads=2))
    with pytest.raises(ValueError, match="threads"):
        te.TransformerEncoder.from_keras(layer, threads=0)
    # Masks in any numeric dtype; the same result as uint8 (nonzero = keep).
    pm = t.get("padding_mask")
    if pm is not None:
        want = enc(x, pm)
        for dt in (np.bool_, np.int32, np.int64, np.float32, np.float64, np.int16):
            assert np.array_equal(enc(x, pm.astype(dt)), want), dt
    # float64 and non-contiguous inputs are converted.
    assert np.array_equal(enc(x.astype(np.float64)), enc(x))
    xt = np.ascontiguousarray(np.swapaxes(x, 0, 1))
    assert np.array_equal(enc(np.swapaxes(xt, 0, 1)), enc(x))
