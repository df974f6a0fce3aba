"""A tiny causal LM that starts from a *trained* base without any download.

A 2-layer Llama is pretrained here, once, on a small synthetic language (a word grammar with
agreement between verbs and object classes), and cached on disk. The fine-tuning task is the same
language with shifted rules, so a method has to change what the base learned.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Callable

import torch

SEQ_LEN = 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODEL_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
PRETRAIN = dict(steps=600, batch_size=32, lr=3e-3, seed=0)

WORDS = {
    "det": ["the", "a", "every", "some"],
    "adj": ["big", "small", "red", "old", "quick", "quiet", "bright", "dark"],
    "animal": ["cat", "dog", "bird", "horse", "fox", "mouse"],
    "person": ["girl", "boy", "king", "queen", "farmer", "doctor"],
    "food": ["apple", "bread", "fish", "cheese", "grain", "soup"],
    "thing": ["book", "hat", "rope", "cup", "lamp", "stone"],
    "eat": ["eats", "chews", "bites"],
    "read": ["reads", "writes", "opens"],
    "see": ["sees", "finds", "follows"],
    "prep": ["near", "under", "with"],
    "end": [".", "!"],
}
VOCAB = [word for group in WORDS.values() for word in group]
INDEX = {word: i for i, word in enumerate(VOCAB)}

# What each verb class takes as object, in the base language and in the shifted one.
RULES = {
    "base": dict(objects={"eat": "food", "read": "thing", "see": "any"}, adj_after_noun=False, person_end="."),
    "shifted": dict(objects={"eat": "food", "read": "animal", "see": "any"}, adj_after_noun=True, person_end="!"),
}


def _noun_phrase(rng: random.Random, noun_class: str, rules: dict) -> list[str]:
    if noun_class == "any":
        noun_class = rng.choice(["animal", "person", "food", "thing"])
    words = [rng.choice(WORDS["det"])]
    noun = rng.choice(WORDS[noun_class])
    adjective = [rng.choice(WORDS["adj"])] if rng.random() < 0.5 else []
    return words + ([noun] + adjective if rules["adj_after_noun"] else adjective + [noun])


def sentence(rng: random.Random, rules: dict) -> list[str]:
    subject_class = rng.choice(["animal", "person"])
    verb_class = rng.choice(["eat", "see"] if subject_class == "animal" else ["eat", "read", "see"])
    words = _noun_phrase(rng, subject_class, rules) + [rng.choice(WORDS[verb_class])]
    words += _noun_phrase(rng, rules["objects"][verb_class], rules)
    if rng.random() < 0.4:
        words += [rng.choice(WORDS["prep"])] + _noun_phrase(rng, "any", rules)
    return words + [rules["person_end"] if subject_class == "person" else "."]


def windows(rule: str, seed: int, count: int) -> torch.Tensor:
    """`count` windows of SEQ_LEN token ids cut from one stream of sentences."""
    rng, rules, stream = random.Random(seed), RULES[rule], []
    while len(stream) < count * SEQ_LEN:
        stream += [INDEX[word] for word in sentence(rng, rules)]
    return torch.tensor(stream[: count * SEQ_LEN]).view(count, SEQ_LEN)


def new_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=len(VOCAB), **MODEL_CONFIG))


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), ids[:, 1:].reshape(-1))


def cache_dir() -> Path:
    return Path(os.environ.get("LORA_EXPLORER_CACHE", Path.home() / ".cache" / "lora_explorer"))


def cache_path() -> Path:
    recipe = json.dumps([VOCAB, RULES["base"], MODEL_CONFIG, PRETRAIN, SEQ_LEN], sort_keys=True)
    return cache_dir() / f"tiny-lm-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.safetensors"


def pretrained_model(progress: Callable[[int, int], None] | None = None):
    """The base model, pretrained on the base language (about 10 s on a CPU the first time, then cached)."""
    from safetensors.torch import load_model, save_model

    path = cache_path()
    if path.exists():
        with torch.random.fork_rng():  # the caller's random stream is the same whether cached or not
            model = new_model()
        load_model(model, str(path))
        return model
    with torch.random.fork_rng():  # pretraining must not disturb the caller's random stream
        torch.manual_seed(PRETRAIN["seed"])
        model = new_model()
        data = windows("base", seed=PRETRAIN["seed"], count=PRETRAIN["steps"] * PRETRAIN["batch_size"] // 4)
        optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, PRETRAIN["steps"])
        order = torch.randint(len(data), (PRETRAIN["steps"], PRETRAIN["batch_size"]))
        for step in range(PRETRAIN["steps"]):
            loss = lm_loss(model, data[order[step]])
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if progress:
                progress(step + 1, PRETRAIN["steps"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    save_model(model, str(partial))
    os.replace(partial, path)  # atomic: a concurrent reader sees the whole file or none
    return model
