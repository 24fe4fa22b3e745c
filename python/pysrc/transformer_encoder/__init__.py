"""KerasHub's ``TransformerEncoder`` layer and sentence-transformers models on CPUs.

The kernels (AMX tiles, AVX-512, AVX2, portable) are chosen at run time by CPU feature, as in the
Rust crate ``transformer-encoder`` this package wraps; every call that computes releases the GIL,
so Python threads sharing one encoder run in parallel.

>>> from transformer_encoder import SentenceEncoder
>>> enc = SentenceEncoder("all-MiniLM-L6-v2", precision="int8")   # doctest: +SKIP
>>> enc.encode(["How do I reset the router?"]).shape              # doctest: +SKIP
(1, 384)

Errors are Python exceptions: ``ValueError`` for bad values and shapes (with the Rust message,
which names the argument), ``TypeError`` for arguments of the wrong type.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from . import _native

__all__ = ["SentenceEncoder", "TransformerEncoder", "__version__"]
__version__ = "0.1.0"

_MASK_DTYPES = (np.bool_, np.uint8, np.int32, np.int64, np.float32)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: at least {minimum}, got {value}")
    return int(value)


def _threads(threads: Optional[int]) -> Optional[int]:
    return None if threads is None else _check_int("threads", threads, 1)


class SentenceEncoder:
    """A sentence-transformers model folder (``config.json``, ``model.safetensors``,
    ``tokenizer.json``, optional ``1_Pooling``, ``modules.json``, ``sentence_bert_config.json``).

    Args:
        path: the model folder.
        precision: ``"fp32"`` (float32, as PyTorch computes it), ``"bf16"`` (Keras'
            ``mixed_bfloat16``: bf16 operands, float32 sums) or ``"int8"`` (Keras'
            ``quantize("int8")``: int8 weights and per-token activation scales).
        threads: threads per call (``None``: every core this process may use).
        max_batch_tokens: the token budget of one ragged batch: the texts of a call are packed
            end to end, without padding, in batches of at most this many tokens.
        bf16_attention: run the attention's two products on bf16 operands (float32 sums) on
            AMX-BF16 tiles for texts of 64 tokens or more, whatever ``precision`` is: faster on
            long texts, an option beyond Keras' semantics for ``"fp32"`` and ``"int8"`` (``"bf16"``
            does so anyway). ``ValueError`` on a CPU without bf16 tiles.

    The embeddings of a text are the same bits whatever else is in the call, however it is
    batched and however many threads run.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        precision: str = "fp32",
        threads: Optional[int] = None,
        max_batch_tokens: int = 512,
        bf16_attention: bool = False,
    ) -> None:
        if not isinstance(precision, str):
            raise TypeError(f"precision: a str, got {type(precision).__name__}")
        if not isinstance(bf16_attention, bool):
            raise TypeError(f"bf16_attention: a bool, got {type(bf16_attention).__name__}")
        max_batch_tokens = _check_int("max_batch_tokens", max_batch_tokens, 1)
        self._inner = _native.SentenceEncoder(
            os.fspath(path), precision, _threads(threads), max_batch_tokens, bf16_attention
        )

    def encode(
        self,
        sentences: Union[str, Sequence[str]],
        batch_size: int = 32,
        show_progress_bar: Optional[bool] = None,
        output_value: Optional[str] = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: Optional[str] = None,
        normalize_embeddings: bool = False,
    ) -> np.ndarray:
        """Embed ``sentences``: a float32 array ``[len(sentences), dim]``, or ``[dim]`` for one
        string, as ``sentence_transformers.SentenceTransformer.encode`` returns it.

        The arguments are sentence-transformers' own, with its defaults. ``batch_size`` is
        accepted for compatibility: batching here is by tokens (``max_batch_tokens``), and the
        results do not depend on it. ``normalize_embeddings=True`` L2-normalises each row (as
        ``torch.nn.functional.normalize`` does; a model with a ``Normalize`` module normalises
        anyway). Only ``output_value="sentence_embedding"``, ``precision="float32"``, numpy
        output and the CPU are available.
        """
        _check_int("batch_size", batch_size, 1)
        if output_value != "sentence_embedding":
            raise ValueError(
                f"output_value: only 'sentence_embedding' is available, got {output_value!r}"
            )
        if precision != "float32":
            raise ValueError(
                f"precision: only 'float32' embeddings are available, got {precision!r} (the "
                "computing precision is the encoder's: SentenceEncoder(path, precision=...))"
            )
        if convert_to_tensor or not convert_to_numpy:
            raise ValueError("convert_to_numpy: only numpy arrays are available")
        if device not in (None, "cpu"):
            raise ValueError(f"device: only 'cpu' is available, got {device!r}")
        single = isinstance(sentences, str)
        if single:
            texts = [sentences]
        else:
            if isinstance(sentences, (bytes, bytearray)) or not isinstance(sentences, Sequence):
                raise TypeError("sentences: a str or a sequence of str")
            texts = list(sentences)
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(f"sentences[{i}]: a str, got {type(t).__name__}")
        out = self._inner.encode(texts)
        if normalize_embeddings:
            norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float32))
            out /= np.maximum(norms, np.float32(1e-12))[:, None]
        return out[0] if single else out

    def get_sentence_embedding_dimension(self) -> int:
        """The embedding size."""
        return self._inner.dim

    @property
    def max_seq_length(self) -> int:
        """The longest text in tokens, special tokens included (longer texts are truncated)."""
        return self._inner.max_seq_length

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``int8``."""
        return self._inner.precision

    @property
    def threads(self) -> int:
        """Threads per call."""
        return self._inner.threads

    @property
    def isa(self) -> str:
        """The instruction-set tier the kernels run on (``avx512amx``, ..., ``portable``)."""
        return self._inner.isa

    @property
    def bf16_attention(self) -> bool:
        """Whether the attention's products run on bf16 tiles from 64 tokens (the option)."""
        return self._inner.bf16_attention

    def __repr__(self) -> str:
        return (
            f"SentenceEncoder(dim={self._inner.dim}, precision={self.precision!r}, "
            f"threads={self.threads}, isa={self.isa!r})"
        )


def _mask(name: str, m: Any) -> Optional[np.ndarray]:
    """A mask as a C-contiguous array of a dtype the kernels take (converted if needed)."""
    if m is None:
        return None
    a = np.asarray(m)
    if a.dtype.type not in _MASK_DTYPES:
        if np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
        elif np.issubdtype(a.dtype, np.integer):
            a = a.astype(np.int64)
        else:
            raise TypeError(f"{name}: a numeric or bool array, got dtype {a.dtype}")
    return np.ascontiguousarray(a)


class TransformerEncoder:
    """One ``keras_hub.layers.TransformerEncoder`` layer with its weights, ready to run.

    Build it with :meth:`from_keras` (a built KerasHub layer, float or after Keras'
    ``quantize("int8")``) or :meth:`load` (a safetensors file under the layer's variable paths
    with its ``get_config()`` as metadata ``config``). A ``mixed_bfloat16`` layer computes in
    bf16 as Keras defines it; an int8-quantized one in Keras' int8 mode.
    """

    def __init__(self, native: "_native.TransformerEncoder") -> None:
        if not isinstance(native, _native.TransformerEncoder):
            raise TypeError(
                "use TransformerEncoder.from_keras(layer) or TransformerEncoder.load(path)"
            )
        self._inner = native

    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike],
        precision: Optional[str] = None,
        threads: Optional[int] = None,
    ) -> "TransformerEncoder":
        """A layer saved as safetensors (``examples/keras_to_safetensors.py``), in its own
        precision or ``precision`` (``"fp32"``, ``"bf16"``, ``"int8"``: a float layer can be
        quantized or rounded to bf16 at load)."""
        return cls(_native.TransformerEncoder.load(os.fspath(path), precision, _threads(threads)))

    @classmethod
    def from_keras(
        cls, layer: Any, precision: Optional[str] = None, threads: Optional[int] = None
    ) -> "TransformerEncoder":
        """The same layer as a built KerasHub ``TransformerEncoder`` (its ``get_config()`` and
        variables, read once; float, ``mixed_bfloat16`` or after ``quantize("int8")``)."""
        if not getattr(layer, "built", False):
            raise ValueError(
                "layer: build it first (call it once, or layer.build((batch, seq, hidden)))"
            )
        config = layer.get_config()
        prefix = layer.path + "/" if getattr(layer, "path", None) else layer.name + "/"
        tensors: Dict[str, np.ndarray] = {}
        for w in layer.weights:
            name = w.path[len(prefix) :] if w.path.startswith(prefix) else w.path
            value = np.asarray(w.numpy())
            if value.dtype != np.int8:
                value = value.astype(np.float32)
            tensors[name] = np.ascontiguousarray(value)
        native = _native.TransformerEncoder.from_tensors(
            json.dumps(config), tensors, precision, _threads(threads)
        )
        return cls(native)

    def __call__(
        self,
        x: Any,
        padding_mask: Any = None,
        attention_mask: Any = None,
    ) -> np.ndarray:
        """The layer's output ``[batch, seq, hidden]`` (float32) for ``x [batch, seq, hidden]``.

        ``x`` is read in place when it is a C-contiguous float32 array (else converted once);
        ``padding_mask [batch, seq]`` and ``attention_mask [batch, seq, seq]`` as Keras takes
        them (nonzero or True = keep), in any numeric or bool dtype. Do not write to the arrays
        from another thread during the call.
        """
        a = np.ascontiguousarray(x, dtype=np.float32)
        if a.ndim != 3:
            raise ValueError(f"x: rank 3 [batch, seq, hidden], got shape {a.shape}")
        return self._inner.forward(
            a, _mask("padding_mask", padding_mask), _mask("attention_mask", attention_mask)
        )

    @property
    def config(self) -> Dict[str, Any]:
        """The layer's Keras config."""
        return json.loads(self._inner.config_json)

    @property
    def hidden_dim(self) -> int:
        """The hidden size the layer takes."""
        return self._inner.hidden_dim

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``int8``."""
        return self._inner.precision

    @property
    def isa(self) -> str:
        """The instruction-set tier the kernels run on."""
        return self._inner.isa

    def __repr__(self) -> str:
        return (
            f"TransformerEncoder(hidden_dim={self.hidden_dim}, precision={self.precision!r}, "
            f"isa={self.isa!r})"
        )
