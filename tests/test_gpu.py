"""GPU-only paths: device selection, bf16 autocast and the analysis on CUDA. Skipped on CPU-only machines."""
import pytest

import lora_explorer as lx
from lora_explorer.train import pick_device

pytestmark = pytest.mark.gpu


def test_auto_device_is_cuda_and_training_runs_in_bf16_autocast(runs_dir):
    assert pick_device("auto").type == "cuda"
    run = lx.train(lx.RunConfig(model="toy", method="dora", steps=30), runs_dir)
    summary = run.summary()
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")
    assert summary["peak_mem_mb"] > 0
    assert abs(lx.evaluate_run(run.path)["eval_loss"] - summary["final_eval_loss"]) < 1e-3


@pytest.mark.parametrize("method", ["full", "lora-pro", "dora"])
def test_alignment_on_cuda_under_bf16_autocast(runs_dir, method):
    """Hooks see bf16 activations and output grads; g is accumulated in fp32, so full FT still
    matches its own weight grad and no cos exceeds 1 (or, for LoRA-Pro, its rank-2r bound)."""
    run = lx.train(lx.RunConfig(model="toy", method=method, steps=20), runs_dir)
    records = run.alignment()
    assert run.summary()["status"] == "completed" and records
    for record in records:
        assert record["cos"] is not None and -1 <= record["cos"] <= 1 + 1e-6
        if method == "full":
            assert record["cos"] > 0.99
        if method == "lora-pro":
            assert record["cos"] <= record["bound_2r"] + 1e-3
