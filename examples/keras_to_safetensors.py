#!/usr/bin/env python3
"""Write a KerasHub TransformerEncoder layer's weights as safetensors under the crate's names (SPEC 2).

Each variable is stored under its path relative to the layer, e.g.
`self_attention_layer/query/kernel` [hidden, heads, key_dim], and the layer's get_config() JSON is
stored as metadata `config` (plus `hidden_dim`), so the crate can rebuild the same layer:

    let cfg = EncoderConfig::from_keras_json_str(&config_json)?;
    let w = EncoderWeights::from_safetensors_file("encoder.safetensors", "")?;
    let enc = TransformerEncoder::new(cfg, w)?;

Use from Python:
    from keras_to_safetensors import export_layer
    export_layer(model.get_layer("transformer_encoder"), "encoder.safetensors")
or from the command line on a saved model:
    python keras_to_safetensors.py model.keras LAYER_NAME OUT.safetensors

Setup once: python3 -m venv /tmp/kerasenv && /tmp/kerasenv/bin/pip install keras keras-hub jax safetensors numpy
"""
import json
import sys

import numpy as np
from safetensors.numpy import save_file


def export_layer(layer, path):
    """Write `layer`'s weights (float32) and config to `path`. The layer must be built."""
    if not layer.built:
        raise ValueError("build the layer first (call it once, or layer.build((batch, seq, hidden)))")
    prefix = layer.name + "/"
    tensors = {}
    for w in layer.weights:
        name = w.path[len(prefix):] if w.path.startswith(prefix) else w.path
        tensors[name] = np.ascontiguousarray(np.asarray(w, dtype=np.float32))
    hidden = tensors["self_attention_layer/query/kernel"].shape[0]
    cfg = layer.get_config()
    save_file(tensors, path, metadata={"config": json.dumps(cfg), "hidden_dim": str(hidden)})
    return sorted(tensors)


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        sys.exit(2)
    import keras
    import keras_hub  # noqa: F401  (registers the layer classes for loading)
    model = keras.models.load_model(sys.argv[1])
    names = export_layer(model.get_layer(sys.argv[2]), sys.argv[3])
    print(f"wrote {len(names)} tensors to {sys.argv[3]}")


if __name__ == "__main__":
    main()
