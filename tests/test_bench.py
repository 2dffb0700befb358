"""The device script, run as a lent GPU machine runs it but on this CPU and small: a session's few minutes
on a GPU must not be lost to a script that no longer runs against the compute core."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_study_runs_end_to_end_on_a_cpu(data_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "device_study.py"), "--data-dir", str(data_dir.resolve()), "--cache-dir",
         str(tmp_path), "--device", "cpu", "--limit", "600", "--epochs", "2", "--k", "20", "--check", "50",
         "--repeat-train", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])  # the last thing printed: one JSON object
    assert set(out["final_loss"]) == {"linear_l1", "linear_mse", "relu_l1", "relu_mse"}
    assert out["identical_to_cpu"] and all(out["identical_to_cpu"].values())
    assert out["deterministic"]["same_bits"] is True
    assert {"score@5", "score@10", "score@20", "knn_acc@5"} <= set(out["results"]["relu_mse l2"])
