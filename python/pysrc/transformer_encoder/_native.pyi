"""Type stubs of the extension module `transformer_encoder._native` (the Rust bindings).

The public API is `transformer_encoder.SentenceEncoder` and `transformer_encoder.TransformerEncoder`,
which wrap these classes; they are documented there.
"""

from typing import Dict, Optional

import numpy as np
import numpy.typing as npt

class SentenceEncoder:
    def __init__(
        self,
        path: str,
        precision: str = "fp32",
        threads: Optional[int] = None,
        max_batch_tokens: int = 512,
        bf16_attention: bool = False,
    ) -> None: ...
    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """The embeddings `[len(texts), dim]`, computed without the GIL."""
    @property
    def dim(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def precision(self) -> str: ...
    @property
    def isa(self) -> str: ...
    @property
    def max_seq_length(self) -> int: ...
    @property
    def normalizes(self) -> bool: ...
    @property
    def bf16_attention(self) -> bool: ...

class TransformerEncoder:
    @staticmethod
    def load(path: str, precision: Optional[str] = None, threads: Optional[int] = None) -> "TransformerEncoder": ...
    @staticmethod
    def from_tensors(
        config_json: str,
        tensors: Dict[str, npt.NDArray[np.generic]],
        precision: Optional[str] = None,
        threads: Optional[int] = None,
    ) -> "TransformerEncoder": ...
    def forward(
        self,
        x: npt.NDArray[np.float32],
        padding_mask: Optional[npt.NDArray[np.generic]] = None,
        attention_mask: Optional[npt.NDArray[np.generic]] = None,
    ) -> npt.NDArray[np.float32]:
        """The layer's output for a C-contiguous float32 `x [batch, seq, hidden]`, computed without the GIL."""
    @property
    def config_json(self) -> str: ...
    @property
    def hidden_dim(self) -> int: ...
    @property
    def precision(self) -> str: ...
    @property
    def isa(self) -> str: ...
