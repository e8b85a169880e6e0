"""Models and tokenizers for CPT, offline: tiny random-init models saved to and loaded from disk,
a BPE tokenizer trained here, and clear errors for what cannot be loaded."""

import pytest
import torch

from pretrain.cpt.corpora import write_corpus
from pretrain.cpt.model import ModelConfig, llama_config, load_model, load_tokenizer, train_tokenizer
from retain.errors import ConfigError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    paths = write_corpus(out, n_people=30, paraphrases=2)
    return train_tokenizer([paths["bios"]], vocab_size=400, out_dir=out / "tokenizer")


def test_trained_tokenizer_round_trips_text(tokenizer):
    text = "Alda Ash Ardent was born in Aldermoor."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_token == "<|endoftext|>" and len(tokenizer) <= 400


def test_random_init_model_is_seeded_and_fits_the_tokenizer(tokenizer):
    cfg = ModelConfig(config=llama_config(32, layers=1, heads=2, intermediate_size=64, max_positions=2048))
    a, b = load_model(cfg, tokenizer, seed=3), load_model(cfg, tokenizer, seed=3)
    assert a.config.vocab_size == len(tokenizer)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    ids = torch.tensor([tokenizer.encode("Boris was born.")])
    assert a(input_ids=ids, labels=ids).loss.item() > 0


def test_pretrained_model_and_tokenizer_load_from_a_local_folder(tokenizer, tmp_path):
    model = load_model(ModelConfig(config={"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}), tokenizer)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    cfg = ModelConfig(name_or_path=str(tmp_path / "m"))
    loaded = load_model(cfg)
    assert type(loaded).__name__ == "GPT2LMHeadModel" and len(load_tokenizer(cfg)) == len(tokenizer)


@pytest.mark.parametrize(
    "cfg, words",
    [
        (ModelConfig(name_or_path="/no/such/folder"), "neither a local folder nor reachable"),
        (ModelConfig(config={"hidden_size": 8}), "model_type"),
        (ModelConfig(config={"model_type": "no-such-architecture"}), "not a valid"),
    ],
)
def test_models_that_cannot_load_say_why(cfg, words):
    with pytest.raises(ConfigError, match=words):
        load_model(cfg)


def test_no_tokenizer_and_no_text():
    with pytest.raises(ConfigError, match="no tokenizer"):
        load_tokenizer(ModelConfig())
