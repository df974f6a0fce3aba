"""The CLI end to end, and every kind of bad input giving one clear line and no run."""
import json
import os
import subprocess
import sys

import pytest

from lora_explorer import data_files
from lora_explorer.cli import main
from lora_explorer.errors import ConfigError
from conftest import run_dirs


def test_cli_train_then_runs_then_evaluate(runs_dir):
    env = {**os.environ, "LORA_EXPLORER_RUNS": str(runs_dir)}
    done = subprocess.run([sys.executable, "-m", "lora_explorer", "train", "--model", "toy", "--method", "lora-plus",
                           "--steps", "30", "--ratio", "4", "--rank", "4", "--target-rank", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    run_dir = done.stdout.strip().splitlines()[-1]
    config = json.loads(open(os.path.join(run_dir, "config.json")).read())
    assert config["method_params"]["ratio"] == 4.0 and config["method_params"]["rank"] == 4
    assert config["task_params"]["target_rank"] == 2
    assert "30/30" in done.stderr  # the progress bar

    listing = subprocess.run([sys.executable, "-m", "lora_explorer", "runs"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert os.path.basename(run_dir) in listing.stdout and "completed" in listing.stdout

    evaluated = subprocess.run([sys.executable, "-m", "lora_explorer", "evaluate", run_dir], capture_output=True,
                               text=True, env=env, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads(open(os.path.join(run_dir, "summary.json")).read())
    loss_line = evaluated.stdout.splitlines()[0]
    assert abs(float(loss_line.split()[1]) - summary["final_eval_loss"]) < 1e-4


def test_methods_lists_every_registered_method(capsys):
    assert main(["methods"]) == 0
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert ids == ["full", "lora", "lora-plus", "rslora", "dora", "vera", "lora-fa", "lora-drop", "adalora",
                   "delta-lora", "lora-ga", "lora-pro"]


BAD = [
    (["--rank", "0"], "--rank must be at least 1"),
    (["--rank", "100"], "larger than layer"),
    (["--rank", "2.5"], "whole number"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "-1"], "--lr must be at least 0"),
    (["--lr", "nan"], "finite"),
    (["--lr", "abc"], "must be a number"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "1e12"], "--steps must be at most"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--model", "no/such-model-offline"], "cannot load model"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--method", "full", "--rank", "4"], "method 'full' has no parameter --rank"),
    (["--method", "lora", "--ratio", "4"], "method 'lora' has no parameter --ratio"),
    (["--model", "minilm", "--task", "/no/such/file.csv"], "cannot read data file"),
    (["--model", "toy", "--task", "sentiment"], "sentiment"),
    (["--model", "tiny-lm", "--task", "teacher"], "teacher"),
    (["--decay", "0"], "--decay must be at least"),
    (["--lr-schedule", "weird"], "must be one of constant, linear, cosine"),
    (["--bogus", "1"], "unrecognized arguments"),
    (["--method", "vera", "--rank", "17"], "larger than layer"),
    (["--method", "adalora", "--final-rank", "20"], "larger than the initial --rank 12"),
    (["--method", "adalora", "--steps", "3", "--warmup-fraction", "0.5", "--final-fraction", "0.5"], "too few"),
    (["--method", "lora-drop", "--threshold", "0"], "--threshold must be at least"),
    (["--method", "lora-ga", "--estimation-batches", "0"], "--estimation-batches must be at least 1"),
    (["--method", "lora-ga", "--rank", "9"], "2r must fit"),
    (["--method", "delta-lora", "--steps", "10", "--start-step", "10"], "must be less than --steps 10"),
    (["--method", "lora-pro", "--moments", "half"], "must be one of full, factor"),
    (["--lr", "inf"], "finite"),
    (["--batch-size", "1e9"], "--batch-size must be at most"),
    (["--rank", "100000"], "--rank must be at most 4096"),
    (["--method", "rslora", "--alpha", "0"], "--alpha must be at least"),
    (["--method", "dora", "--dropout", "0.95"], "--dropout must be at most 0.9"),
    (["--method", "lora-plus", "--ratio", "0.5"], "--ratio must be at least 1"),
    (["--method", "lora-fa", "--target-modules", "nosuchlayer"], "nosuchlayer"),
    (["--method", "vera", "--d-initial", "0"], "--d-initial must be at least"),
    (["--method", "lora-drop", "--sample-fraction", "2"], "--sample-fraction must be at most 1"),
    (["--method", "delta-lora", "--update-ratio", "-1"], "--update-ratio must be at least 0"),
    (["--seed", "-3"], "--seed must be at least 0"),
    (["--warmup-steps", "x"], "must be a number"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_prints_one_clear_line_and_starts_nothing(runs_dir, capsys, args, message):
    try:
        code = main(["train", *args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert run_dirs(runs_dir) == []


def test_evaluate_of_a_non_run_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


GOOD_CSV = b"text,label,extra\n" + b"".join(b"sentence %d,%s,x\n" % (i, b"pos" if i % 2 else b"neg") for i in range(10))
BAD_FILES = [
    ("empty.csv", b"", "is empty"),
    ("blank.csv", b"\n\n  \n", "is empty"),
    ("nolabel.csv", b"text\nhello\nworld\nfoo\nbar\n", "no 'label' column"),
    ("notext.jsonl", b'{"label": 1}\n', "no 'text' column"),
    ("latin1.csv", "text,label\ncaf\u00e9,1\n".encode("latin-1"), "not valid UTF-8"),
    ("binary.csv", b"\x00\x01\x02PK\x03\x04", "looks binary"),
    ("fields.csv", b"text,label\na,1\nb,2,3\n", "line 3 has 3 fields"),
    ("short.csv", b"text,label\na,1\nb,0\n", "at least 4"),
    ("onelabel.csv", b"text,label\na,1\nb,1\nc,1\nd,1\n", "single label"),
    ("broken.jsonl", b'{"text": "a", "label": 1}\n{"text": \n', "line 2 is not JSON"),
    ("emptytext.csv", b"text,label\n,1\nb,0\nc,1\nd,0\n", "'text' is empty"),
]


@pytest.mark.parametrize("name,data,message", BAD_FILES, ids=[n for n, _, _ in BAD_FILES])
def test_bad_data_files_are_rejected_with_a_reason(tmp_path, name, data, message):
    with pytest.raises(ConfigError, match=message):
        data_files.parse(data, name, "classification")


def test_too_large_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data_files, "MAX_BYTES", 100)
    with pytest.raises(ConfigError, match="the limit is"):
        data_files.load_rows(write(tmp_path, "big.csv", GOOD_CSV * 3), "classification")


def test_good_files_parse_with_extra_columns_ignored(tmp_path):
    rows = data_files.parse(GOOD_CSV, "ok.csv", "classification")
    assert len(rows) == 10 and rows[1] == ("sentence 1", "pos")
    jsonl = b"".join(json.dumps({"text": f"t{i}"}).encode() + b"\n" for i in range(5))
    assert data_files.parse(jsonl, "lm.jsonl", "lm")[0] == ("t0", None)


def test_user_csv_trains_minilm(runs_dir, tmp_path, capsys):
    lines = [b"text,label"] + [b"%s movie number %d,%s" % (w, i, l) for i in range(20)
                               for w, l in ((b"a great", b"pos"), (b"an awful", b"neg"))]
    path = write(tmp_path, "reviews.csv", b"\n".join(lines))
    assert main(["train", "--model", "minilm", "--task", path, "--steps", "4", "--batch-size", "8",
                 "--eval-fraction", "0.2"]) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(open(os.path.join(run_dir, "summary.json")).read())
    assert summary["status"] == "completed" and summary["eval_metric_name"] == "accuracy"


@pytest.fixture(scope="module")
def local_model_dir(tmp_path_factory):
    """A small Llama saved as a local directory, with MiniLM's tokenizer: stands in for a hub model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lora_explorer.models import minilm_path

    path = tmp_path_factory.mktemp("local-model")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("data,metric", [(b'{"text": "a cat sat on the mat"}\n' * 12, "perplexity"),
                                         (GOOD_CSV, "accuracy")], ids=["lm-jsonl", "classification-csv"])
def test_a_local_model_directory_trains_with_the_right_auto_class(runs_dir, tmp_path, capsys, local_model_dir,
                                                                  data, metric):
    path = write(tmp_path, "data.jsonl" if metric == "perplexity" else "data.csv", data)
    assert main(["train", "--model", local_model_dir, "--task", path, "--method", "lora", "--rank", "4",
                 "--steps", "3", "--batch-size", "4"]) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(open(os.path.join(run_dir, "summary.json")).read())
    assert summary["status"] == "completed" and summary["eval_metric_name"] == metric
    config = json.loads(open(os.path.join(run_dir, "config.json")).read())
    assert config["trust_remote_code"] is False


def test_a_runs_root_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # even root cannot create a directory under a file
    assert main(["train", "--steps", "2", "--runs-dir", str(blocker / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create runs directory" in err[0], err
    assert blocker.read_text() == "not a folder" and [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_evaluate_cannot_leave_the_runs_root(tmp_path, capsys):
    assert main(["evaluate", "../../no-such-run", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside the runs directory" in err[0]
