"""GPU-only paths: device selection and bf16 autocast on CUDA. Skipped on CPU-only machines."""
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
