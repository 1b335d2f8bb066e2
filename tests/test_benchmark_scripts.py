"""The small benchmark scripts on made-up inputs: what they compute, by hand."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import write_tiny_dataset

from benchmarks import encode, time_to_quality


def test_time_to_quality_by_hand(tmp_path):
    rows = pd.DataFrame(
        {
            "label": ["SASRec", "SRT", "slow"],
            "seed": [0, 0, 0],
            "valid_curve": ["[0.1, 0.3, 0.2]", "[0.25, 0.35]", "[0.05, 0.1, 0.2, 0.29]"],
            "epoch_seconds": ["[10, 10, 10]", "[8, 8]", "[10, 10, 10, 10]"],
        }
    )
    rows.to_csv(tmp_path / "results.csv", index=False)
    assert time_to_quality.main(["--results", str(tmp_path / "results.csv")]) == 0
    table = time_to_quality.table(time_to_quality.curves(rows.astype(str)), "SASRec").set_index("label")
    reach, within = table.columns[1], table.columns[2]
    assert reach == "s to SASRec's best (0.3000)" and within == "best valid NDCG@10 within 30 s"
    assert table.loc["SASRec", reach] == 20 and table.loc["SRT", reach] == 16
    assert pd.isna(table.loc["slow", reach]) and table.loc["slow", within] == pytest.approx(0.2)
    assert "never" in (tmp_path / "time_to_quality.md").read_text()
    assert (tmp_path / "time_to_quality.png").stat().st_size > 0


@pytest.mark.slow
def test_gpu_check_runs_its_tiny_cpu_version(tmp_path):
    """What CI runs of the GPU check: one tiny size x fp32/bf16 x eager/compiled, then a one-trial sweep."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    settings = "{MAX_ITEM_LIST_LENGTH: 10, train_batch_size: 256}"
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--gpu-check", "--steps=2", "--warmup=1",
         f"--config-dict={settings}", f"--out={tmp_path}"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert len(report["cells"]) == 4 and all(c["sequences_per_s"] > 0 for c in report["cells"])
    assert report["sweep"]["returncode"] == 0 and report["sweep"]["results"]["status"] == {"TERMINATED": 1}
    assert "compiled" in (tmp_path / "throughput.md").read_text()


def test_encode_benchmark_times_cells_and_the_store(tmp_path):
    """Two encoder cells on a tiny catalog, and a store of 3,000 items loaded in a fresh process."""
    folder = write_tiny_dataset(tmp_path)
    cells = ["plain encode (torch fp32)", "token cap 32"]
    out = tmp_path / "out"
    encode.main(["--item-file", str(folder / "tiny.item"), "--sample", "20", "--rounds", "1",
                 "--cells", *cells, "--store-items", "3000", "--out", str(out)])  # fmt: skip
    speed = pd.read_csv(out / "speed.csv").set_index("cell")
    assert list(speed.index) == cells and (speed["items_per_s"] > 0).all()
    assert speed.loc[cells[0], "speedup"] == 1.0 and speed.loc[cells[0], "cosine_min"] == pytest.approx(1.0)
    store = pd.read_json(out / "store.json", typ="series")
    assert store["items"] == 3000 and 0 < store["store_open_s"] <= store["store_total_s"]
    assert (out / "encode_speed.png").stat().st_size > 0 and "token cap 32" in (out / "encode.md").read_text()
