"""Tasks: the data, the loss and the evaluation metric for a model.

Built-in tasks are generated deterministically by code (so they work offline and every run of a
task sees the same examples); user data comes from CSV/JSONL files or, with the network and the
optional `datasets` package, a Hugging Face dataset name. The run seed only decides the *order*.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lora_explorer import data_files, tiny_lm
from lora_explorer.errors import ConfigError
from lora_explorer.methods.base import Param
from lora_explorer.models import CLASSIFICATION, LM, REGRESSION, ModelBundle


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    summary: str
    params: tuple[Param, ...] = ()
    models: tuple[str, ...] = ()  # built-in models it is made for; empty = any model of this kind


class Task:
    """Holds the tensors of one task. Subclasses set `train`, `eval` (dicts of tensors) and the metric."""

    kind: str
    metric_name: str
    train: dict
    eval: dict

    def __len__(self) -> int:
        return len(next(iter(self.train.values())))

    def batch(self, split: dict, indices: torch.Tensor, device) -> dict:
        return {key: value[indices].to(device, non_blocking=True) for key, value in split.items()}

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch and the number of examples (tokens for an LM) it covered."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 64) -> dict:
        raise NotImplementedError

    def save_artifacts(self, run_dir: Path) -> None:
        """Files a later analysis needs (e.g. the toy's true update)."""


# ---------------------------------------------------------------- toy: regression to a teacher
class TeacherTask(Task):
    """y = teacher(x), the teacher being the toy model with W0 + ΔW* in every layer.

    ΔW* has rank `target_rank` (0 = full rank) with singular values decaying geometrically by
    `decay`, scaled to `delta_scale`·‖W0‖_F; it is saved with the run as `target_delta.safetensors`.
    """

    kind, metric_name = REGRESSION, "r2"

    def __init__(self, bundle: ModelBundle, params: dict):
        import copy

        generator = torch.Generator().manual_seed(params["data_seed"])
        teacher = copy.deepcopy(bundle.model)
        self.target_delta = {}
        with torch.no_grad():
            for name, layer in teacher.named_modules():
                if isinstance(layer, torch.nn.Linear):
                    delta = self._low_rank_delta(layer.weight, params, generator)
                    layer.weight += delta
                    self.target_delta[name] = delta.contiguous()
            d_in = bundle.model.fc1.in_features
            x = torch.randn(params["train_size"] + params["eval_size"], d_in, generator=generator)
            y = teacher(x)
            y += params["noise"] * torch.randn(y.shape, generator=generator)
        n = params["train_size"]
        self.train, self.eval = {"x": x[:n], "y": y[:n]}, {"x": x[n:], "y": y[n:]}

    @staticmethod
    def _low_rank_delta(weight: torch.Tensor, params: dict, generator) -> torch.Tensor:
        d_out, d_in = weight.shape
        full = min(d_out, d_in)
        k = full if params["target_rank"] == 0 else min(params["target_rank"], full)
        u, _ = torch.linalg.qr(torch.randn(d_out, k, generator=generator))
        v, _ = torch.linalg.qr(torch.randn(d_in, k, generator=generator))
        sigma = params["decay"] ** torch.arange(k, dtype=torch.float32)
        delta = (u * sigma) @ v.T
        return delta * (params["delta_scale"] * weight.norm() / delta.norm())

    def loss(self, model, batch):
        return F.mse_loss(model(batch["x"]).float(), batch["y"]), len(batch["y"])

    @torch.no_grad()
    def evaluate(self, model, device, batch_size=1024):
        squared, total = 0.0, 0
        for start in range(0, len(self.eval["y"]), batch_size):
            batch = self.batch(self.eval, torch.arange(start, min(start + batch_size, len(self.eval["y"]))), device)
            squared += F.mse_loss(model(batch["x"]).float(), batch["y"], reduction="sum").item()
            total += batch["y"].numel()
        mse = squared / total
        variance = self.eval["y"].var(unbiased=False).item()
        return {"eval_loss": mse, "r2": 1.0 - mse / variance}

    def save_artifacts(self, run_dir):
        from safetensors.torch import save_file

        save_file(self.target_delta, str(Path(run_dir) / "target_delta.safetensors"))


# ---------------------------------------------------------------- text classification
class ClassificationTask(Task):
    kind, metric_name = CLASSIFICATION, "accuracy"

    def __init__(self, bundle: ModelBundle, train_rows, eval_rows, labels: list, max_length: int):
        if bundle.tokenizer is None:
            raise ConfigError(f"model {bundle.name!r} has no tokenizer; text tasks need minilm or a hub model")
        self.labels = labels
        index = {label: i for i, label in enumerate(labels)}
        self.train = self._encode(bundle.tokenizer, train_rows, index, max_length)
        self.eval = self._encode(bundle.tokenizer, eval_rows, index, max_length)

    @staticmethod
    def _encode(tokenizer, rows, index, max_length):
        encoded = tokenizer([text for text, _ in rows], padding="longest", truncation=True,
                            max_length=max_length, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "labels": torch.tensor([index[label] for _, label in rows])}

    def _logits(self, model, batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def loss(self, model, batch):
        return F.cross_entropy(self._logits(model, batch), batch["labels"]), len(batch["labels"])

    @torch.no_grad()
    def evaluate(self, model, device, batch_size=64):
        loss_sum, correct, total = 0.0, 0, 0
        for start in range(0, len(self.eval["labels"]), batch_size):
            stop = min(start + batch_size, len(self.eval["labels"]))
            batch = self.batch(self.eval, torch.arange(start, stop), device)
            logits = self._logits(model, batch)
            loss_sum += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            correct += (logits.argmax(-1) == batch["labels"]).sum().item()
            total += stop - start
        return {"eval_loss": loss_sum / total, "accuracy": correct / total}


# ---------------------------------------------------------------- causal language modelling
class LanguageModelTask(Task):
    kind, metric_name = LM, "perplexity"

    def __init__(self, train_ids, train_mask, eval_ids, eval_mask):
        self.train = {"input_ids": train_ids, "attention_mask": train_mask}
        self.eval = {"input_ids": eval_ids, "attention_mask": eval_mask}

    @staticmethod
    def _token_losses(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].bool()
        losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none")
        return losses[mask.reshape(-1)]

    def loss(self, model, batch):
        losses = self._token_losses(model, batch)
        return losses.mean(), int(batch["attention_mask"].sum())

    @torch.no_grad()
    def evaluate(self, model, device, batch_size=64):
        loss_sum, tokens = 0.0, 0
        for start in range(0, len(self.eval["input_ids"]), batch_size):
            stop = min(start + batch_size, len(self.eval["input_ids"]))
            losses = self._token_losses(model, self.batch(self.eval, torch.arange(start, stop), device))
            loss_sum += losses.sum().item()
            tokens += losses.numel()
        mean = loss_sum / max(tokens, 1)
        return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50.0))}


# ---------------------------------------------------------------- the built-in sentiment task
SUBJECTS = ["the movie", "this restaurant", "the service", "my new phone", "the hotel room", "the concert",
            "the book", "our teacher", "the coffee", "this laptop", "the weather", "the game", "the staff",
            "the ending", "the soundtrack", "the neighbourhood"]
POSITIVE_TRAIN = ["good", "great", "excellent", "wonderful", "pleasant", "lovely", "fantastic", "enjoyable"]
NEGATIVE_TRAIN = ["bad", "terrible", "awful", "horrible", "boring", "disappointing", "poor", "unpleasant"]
# never seen in training: the model can only get these right from what pretraining taught it
POSITIVE_HELD_OUT = ["superb", "delightful", "brilliant", "marvelous", "charming", "outstanding"]
NEGATIVE_HELD_OUT = ["dreadful", "mediocre", "atrocious", "dull", "miserable", "abysmal"]
INTENSIFIERS = ["", "really ", "very ", "quite ", "truly ", "rather "]


def _sentiment_example(rng: random.Random, positive: list, negative: list) -> tuple[str, str]:
    """One sentence and its label. Negation flips, 'but' makes the second clause decide, and the
    distractor clause after 'although' never decides."""

    def clause(subject):
        polarity = rng.random() < 0.5
        adjective = rng.choice(positive if polarity else negative)
        negated = rng.random() < 0.4
        verb = rng.choice(["was not", "was never", "is not", "wasn't"]) if negated else rng.choice(["was", "is"])
        return f"{subject} {verb} {rng.choice(INTENSIFIERS)}{adjective}", polarity != negated

    first, second = rng.sample(SUBJECTS, 2)
    form = rng.random()
    if form < 0.4:
        text, label = clause(first)
    elif form < 0.7:
        (text_a, _), (text_b, label) = clause(first), clause(second)
        text = f"{text_a}, but {text_b}"
    elif form < 0.85:
        (text_a, _), (text_b, label) = clause(second), clause(first)
        text = f"although {text_a}, {text_b}"
    else:
        text_a, polarity = clause(first)
        text, label = f"i would not say that {text_a}", not polarity
    return text + ".", "positive" if label else "negative"


def sentiment_rows(seed: int, count: int, held_out: bool) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    positive, negative = (POSITIVE_HELD_OUT, NEGATIVE_HELD_OUT) if held_out else (POSITIVE_TRAIN, NEGATIVE_TRAIN)
    return [_sentiment_example(rng, positive, negative) for _ in range(count)]


# ---------------------------------------------------------------- registry and construction
DATA_SEED = Param("data_seed", int, 0, "seed of the generated data (the run seed only sets the order)", 0, 2**31 - 1)
TASKS = {
    "teacher": TaskSpec("teacher", REGRESSION, "regress the toy teacher W0+ΔW* (ΔW* of chosen rank and decay)", (
        Param("target_rank", int, 4, "rank k of the true update ΔW* per layer; 0 = full rank", 0, 4096),
        Param("decay", float, 0.8, "σ_{i+1}/σ_i of ΔW*'s singular values (1 = flat spectrum)", 0.01, 1.0),
        Param("delta_scale", float, 0.5, "‖ΔW*‖_F / ‖W0‖_F per layer", 0.0, 10.0),
        Param("noise", float, 0.01, "std of Gaussian noise added to the targets", 0.0, 10.0),
        Param("train_size", int, 4096, "training examples", 16, 1_000_000),
        Param("eval_size", int, 1024, "held-out examples", 16, 1_000_000),
        DATA_SEED), models=("toy",)),
    "sentiment": TaskSpec("sentiment", CLASSIFICATION,
                          "sentiment with negation, 'but'/'although' clauses; held-out adjectives in eval", (
        Param("train_size", int, 2000, "training sentences", 16, 1_000_000),
        Param("eval_size", int, 400, "held-out sentences (unseen adjectives)", 16, 1_000_000),
        DATA_SEED)),
    "shifted-lang": TaskSpec("shifted-lang", LM, "the tiny LM's synthetic language with shifted rules", (
        Param("train_size", int, 2000, f"training windows of {tiny_lm.SEQ_LEN} tokens", 16, 1_000_000),
        Param("eval_size", int, 200, "held-out windows", 16, 1_000_000),
        DATA_SEED), models=("tiny-lm",)),
}
FILE_PARAMS = (
    Param("eval_fraction", float, 0.1, "share of rows held out for evaluation", 0.01, 0.5),
    Param("max_length", int, 128, "tokens per text (longer texts are truncated)", 8, 4096),
    DATA_SEED,
)


def spec_for(task: str, model_kind: str | None) -> TaskSpec:
    """The TaskSpec of a built-in task name, a data file path, or 'hf:<dataset>'."""
    if task in TASKS:
        return TASKS[task]
    if task.startswith("hf:") or data_files.looks_like_file(task):
        # a hub model can do either: data with a label column is classification, text alone is an LM task
        kind = model_kind or (CLASSIFICATION if data_files.has_labels(task) else LM)
        if kind == REGRESSION:
            raise ConfigError("the toy model trains only on its teacher task, not on text data")
        return TaskSpec(task, kind, "user data", FILE_PARAMS)
    raise ConfigError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}, "
                      "or a .csv/.jsonl file, or hf:<dataset name>")


def check_compatible(spec: TaskSpec, model: str, model_kind: str | None) -> None:
    if spec.models and model not in spec.models:
        raise ConfigError(f"task {spec.name!r} is made for model {', '.join(spec.models)}, not {model!r}")
    if model_kind and spec.kind != model_kind:
        raise ConfigError(f"task {spec.name!r} is a {spec.kind} task but model {model!r} does {model_kind}")
    if model == "tiny-lm" and spec.name not in TASKS:
        raise ConfigError("tiny-lm has its own word vocabulary; train it on 'shifted-lang', "
                          "or use a hub causal LM for your text")


def build_task(spec: TaskSpec, bundle: ModelBundle, params: dict) -> Task:
    seed = params["data_seed"]
    if spec.name == "teacher":
        return TeacherTask(bundle, params)
    if spec.name == "sentiment":
        return ClassificationTask(bundle, sentiment_rows(seed, params["train_size"], held_out=False),
                                  sentiment_rows(seed + 1, params["eval_size"], held_out=True),
                                  ["negative", "positive"], max_length=64)
    if spec.name == "shifted-lang":
        train = tiny_lm.windows("shifted", seed, params["train_size"])
        held_out = tiny_lm.windows("shifted", seed + 10_000, params["eval_size"])
        return LanguageModelTask(train, torch.ones_like(train), held_out, torch.ones_like(held_out))
    rows = data_files.load_rows(spec.name, spec.kind)
    train_rows, eval_rows = data_files.split(rows, params["eval_fraction"], seed)
    limit = getattr(bundle.tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000:  # tokenizers without a limit report a huge sentinel
        params = {**params, "max_length": min(params["max_length"], limit)}
    if spec.kind == CLASSIFICATION:
        labels = sorted({label for _, label in rows}, key=str)
        return ClassificationTask(bundle, train_rows, eval_rows, labels, params["max_length"])
    tokenizer = bundle.tokenizer
    if tokenizer is None:
        raise ConfigError(f"model {bundle.name!r} has no tokenizer for text data")

    def encode(part):
        out = tokenizer([text for text, _ in part], padding="longest", truncation=True,
                        max_length=params["max_length"], return_tensors="pt")
        return out["input_ids"], out["attention_mask"]

    return LanguageModelTask(*encode(train_rows), *encode(eval_rows))


def num_labels(spec: TaskSpec) -> int:
    """Labels a classification head needs, known before the model is loaded."""
    if spec.name == "sentiment":
        return 2
    if spec.kind == CLASSIFICATION and spec.name not in TASKS:
        return len({label for _, label in data_files.load_rows(spec.name, spec.kind)})
    return 2
