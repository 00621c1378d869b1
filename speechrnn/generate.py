"""``python -m speechrnn.generate --ckpt PATH --prime "The " --length 200 --temperature 0.8``: sample
text from a character-level language model trained with ``--data CharTextDataModule``.

The prime is read through the network (its state carried), then one character at a time is drawn
from ``softmax(logits / temperature)`` and fed back; ``--seed`` makes a sample reproducible. Needs a
unidirectional model (a bidirectional one reads the future, which generation does not have).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from speechrnn.data.corpora.text import one_hot
from speechrnn.errors import UserInputError, run_entry_point
from speechrnn.models.classifier import RNNClassifier
from speechrnn.models.encoder import State


@torch.inference_mode()
def sample_text(model: RNNClassifier, prime: str, length: int, temperature: float = 1.0, seed: int = 0) -> str:
    """``prime`` followed by ``length`` sampled characters."""
    vocabulary = list(model.class_names)
    if model.hparams.task != "frame_classification" or model.net.encoder.bidirectional:
        raise UserInputError(
            "generation needs a unidirectional character model (--data CharTextDataModule --model.bidirectional false)"
        )
    if not prime:
        raise UserInputError("the prime must hold at least one character")
    unknown = sorted(set(prime) - set(vocabulary))
    if unknown:
        raise UserInputError(f"the prime has characters the model never saw: {unknown}")
    if not temperature > 0 or length < 0:
        raise UserInputError(f"temperature must be > 0 and length >= 0, got {temperature} and {length}")
    index_of = {char: i for i, char in enumerate(vocabulary)}
    generator = torch.Generator().manual_seed(seed)
    net = model.net.eval()
    device = next(net.parameters()).device
    states: list[State] | None = None
    codes = np.array([index_of[char] for char in prime])
    out = []
    for step in range(length + 1):
        x = torch.from_numpy(one_hot(codes, len(vocabulary)))[None].to(device)
        outputs, states = net.encoder(net.input_norm(x), torch.tensor([len(codes)]), states=states, return_states=True)
        if step == length:
            break
        logits = net.head(outputs[0, -1]).float().cpu()
        choice = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
        out.append(vocabulary[choice])
        codes = np.array([choice])
    return prime + "".join(out)


def generate(
    ckpt: Path, prime: str = "The ", length: int = 200, temperature: float = 1.0, seed: int = 0, device: str = "cpu"
) -> str:
    """Print and return a sample.

    Args:
        ckpt: Checkpoint of a character model (``python -m speechrnn.fit --data CharTextDataModule``).
        prime: Text the sample starts from (every character must be in the model's vocabulary).
        length: Characters to sample after the prime.
        temperature: Below 1 sharpens the distribution (safer text), above 1 flattens it.
        seed: Seed of the sampling.
        device: Torch device.
    """
    model = RNNClassifier.from_checkpoint(os.fspath(ckpt), map_location=device)
    text = sample_text(model, prime, length, temperature, seed)
    print(text)
    return text


def main(args: list[str] | None = None) -> None:
    from speechrnn.cli import run_function

    run_function("generate", generate, args)


if __name__ == "__main__":
    run_entry_point(main)
