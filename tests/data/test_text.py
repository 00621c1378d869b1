"""The character-level language model: text chunks round-trip, and sampling is reproducible."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import numpy as np
import pytest

from speechrnn import RNNClassifier
from speechrnn.data.corpora.text import CharTextDataModule, generated_text
from speechrnn.errors import UserInputError
from speechrnn.fit import main
from speechrnn.generate import sample_text


def test_chunks_round_trip_the_text_and_hold_out_its_end(tmp_path: Path) -> None:
    text = "abcab cab! " * 40
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    dm = CharTextDataModule(text_path=tmp_path / "t.txt", chunk_length=16, val_fraction=0.1, test_fraction=0.1)
    dm.setup("fit")
    assert dm.vocabulary == sorted(set(text)) and dm.feature_dim == len(dm.vocabulary) == dm.num_classes
    chunks = [(dm.store[i], dm.targets()[i]) for i in range(len(dm.store))]
    rebuilt = "".join(dm.decode(features.argmax(1)) for features, _ in chunks) + dm.decode(chunks[-1][1][-1:])
    assert text.startswith(rebuilt) and len(rebuilt) == len(chunks) * 16 + 1
    for features, targets in chunks:  # the target of each step is the next character
        assert dm.decode(targets[:-1]) == dm.decode(features.argmax(1)[1:])
    order = {split: dm.splits[split].tolist() for split in ("train", "val", "test")}
    assert max(order["train"]) < min(order["val"]) and max(order["val"]) < min(order["test"])
    with pytest.raises(UserInputError, match="too few for three chunks"):
        CharTextDataModule(text_path=tmp_path / "t.txt", chunk_length=200).setup("fit")


def untrained(vocabulary: list[str], bidirectional: bool = False) -> RNNClassifier:
    return RNNClassifier(
        len(vocabulary), len(vocabulary), task="frame_classification", cell="rnn", hidden_size=8,
        bidirectional=bidirectional, class_names=vocabulary,
    )  # fmt: skip


def test_sampling_is_reproducible_under_a_seed_and_checks_its_inputs() -> None:
    model = untrained(list("ab c."))
    first = sample_text(model, "ab", 40, temperature=1.0, seed=3)
    assert first == sample_text(model, "ab", 40, temperature=1.0, seed=3)
    assert first.startswith("ab") and len(first) == 42 and set(first) <= set("ab c.")
    assert first != sample_text(model, "ab", 40, temperature=1.0, seed=4)
    with pytest.raises(UserInputError, match=r"never saw: \['z'\]"):
        sample_text(model, "az", 5)
    with pytest.raises(UserInputError, match="unidirectional"):
        sample_text(untrained(list("ab"), bidirectional=True), "a", 5)


@pytest.mark.slow
def test_a_char_model_trained_through_the_cli_beats_the_unigram_baseline(tmp_path: Path) -> None:
    text = generated_text(sentences=800)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    metrics = main([
        "--data", "CharTextDataModule", "--data.text_path", str(tmp_path / "t.txt"), "--data.chunk_length", "32",
        "--data.batch_size", "16",
        "--model.cell", "gru", "--model.bidirectional", "false", "--model.num_layers", "1", "--model.hidden_size", "64",
        "--model.dropout", "0", "--model.lr", "0.01", "--trainer.max_epochs", "6",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    counts = collections.Counter(text)
    unigram_nats = -sum(n / len(text) * math.log(n / len(text)) for n in counts.values())
    assert metrics["test/loss"] < 0.5 * unigram_nats, (metrics, unigram_nats)
    assert np.isfinite(metrics["test/acc"])
