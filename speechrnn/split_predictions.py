"""A DataModule's split through a model: probabilities of every example, with its targets, source and
speaker, for evaluation reports and self-training.

This is the training side's prediction path (features as the DataModule batches them, on any
device); :mod:`speechrnn.inference` is the deployable one (files and waveforms, no DataModule), and
the two agree on every clip.
"""

from __future__ import annotations

import numpy as np
import torch

from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.data.splits import Split
from speechrnn.models.classifier import RNNClassifier, is_per_step, output_activation


@torch.inference_mode()
def split_probabilities(
    model: RNNClassifier, datamodule: SequenceDataModuleBase, split: Split, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Stored indices ``(N,)`` and probabilities of every example in ``split``, in loader order,
    through the training path's features; per-step tasks give the valid frames of every sequence
    concatenated, ``(sum T_i, C)``, and the frame count of each ``(N,)`` (None otherwise)."""
    datamodule.setup("test")
    model = model.to(device).eval()
    per_step = is_per_step(model.hparams.task)
    outputs: list[torch.Tensor] = []
    indices, frame_counts = [], []
    for batch in datamodule.dataloader(split, shuffle=False, shard=False):
        features, lengths, *_ = datamodule.featurize((batch[0].to(device, non_blocking=True), *batch[1:]))
        probabilities = output_activation(model(features, lengths), model.hparams.task).cpu()
        if per_step:
            outputs.extend(p[:n] for p, n in zip(probabilities, lengths.tolist(), strict=True))
            frame_counts.append(lengths.cpu())
        else:
            outputs.append(probabilities)
        indices.append(batch[3])
    counts = torch.cat(frame_counts).numpy() if per_step else None
    return torch.cat(indices).numpy(), torch.cat(outputs).numpy(), counts


def predict_split(
    model: RNNClassifier, datamodule: SequenceDataModuleBase, split: Split, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray, list[str], list[str | None], np.ndarray | None]:
    """Targets, probabilities, sources and speakers of every example in ``split``, and the number of
    frames of each when the task is per step.

    Whole-sequence tasks: targets ``(N,)`` and probabilities ``(N, C)``, lengths None. Per-step
    tasks: the valid frames of every sequence, concatenated in order (targets ``(sum T_i,)``,
    probabilities ``(sum T_i, C)``), and lengths ``(N,)`` to tell the sequences apart.
    """
    indices, probabilities, lengths = split_probabilities(model, datamodule, split, device)
    targets = datamodule.targets()[indices]
    if lengths is not None:
        targets = np.concatenate([np.asarray(t) for t in targets])
    records = [datamodule.record_of(int(i)) for i in indices]
    return targets, probabilities, [r.source for r in records], [r.speaker for r in records], lengths
