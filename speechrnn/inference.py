"""From a checkpoint to probabilities: the one inference graph that :class:`Predictor` runs and
``export`` writes, with exactly the feature settings and statistics the model was trained on.

- :class:`FeatureClassifier`: dataset (or speaker) normalisation, network, output activation;
  ``(features (B, T, F), lengths (B,) frames) -> (B, C)``.
- :class:`WaveformClassifier`: the MFCC front end before it;
  ``(waveforms (B, S) at sample_rate, lengths (B,) samples) -> (B, C)``. Every stage is masked by
  the lengths, so each clip of a zero-padded batch gets what it gets alone.
- :class:`Predictor`: files and waveforms of any rate and channel count -> label probabilities.
- :func:`predict_split`: a DataModule's split through the training path's features -> probabilities
  (per clip, or per frame for per-step tasks).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from speechrnn.audio_io import AudioError, read_audio, resample, to_mono
from speechrnn.data.base import FrameMoments, SequenceDataModuleBase, Split
from speechrnn.features import FeatureSettings, MFCCFrontend, pooled_moments, standardize
from speechrnn.models.classifier import RNNClassifier, is_per_step, output_activation
from speechrnn.models.network import SequenceClassifierNet

SpeakerStatistics = tuple[torch.Tensor, torch.Tensor]
"""A speaker's feature mean and deviation, ``(F,)`` each."""


class FeatureClassifier(nn.Module):
    """A network with its dataset normalisation and output activation, in eval mode:
    ``forward(features (B, T, F) float32, lengths (B,) int64 frames) -> (B, num_outputs)``.

    Softmax probabilities for classification, raw outputs for regression. Checkpoints trained on
    feature sequences export as this; :class:`WaveformClassifier` puts the MFCC front end before it.
    A model trained with ``features.normalize='speaker'`` takes each clip's speaker statistics
    (``mean``, ``std``: ``(F,)`` for the whole batch or ``(B, F)``) with every call.
    """

    def __init__(
        self,
        net: SequenceClassifierNet,
        class_names: list[str],
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        task: str = "classification",
        per_speaker: bool = False,
    ) -> None:
        super().__init__()
        if (feature_mean is None) != (feature_std is None):
            raise ValueError("feature_mean and feature_std must be given together")
        self.net = net
        self.class_names = list(class_names)
        self.task = task
        self.per_speaker = per_speaker
        self.normalized = feature_mean is not None
        if self.normalized:
            self.register_buffer("mean", torch.tensor(feature_mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(feature_std, dtype=torch.float32))
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureClassifier:
        """Works for any checkpoint (an audio one then takes its MFCCs)."""
        return cls.from_model(RNNClassifier.from_checkpoint(path, map_location=device))

    @classmethod
    def from_model(cls, model: RNNClassifier) -> FeatureClassifier:
        """Share ``model``'s network, with its ``data_config``'s labels and statistics."""
        config = model.data_config
        classifier = cls(
            model.net,
            model.class_names,
            config.get("feature_mean"),
            config.get("feature_std"),
            model.hparams.task,
            per_speaker=(config.get("features") or {}).get("normalize") == "speaker",
        )
        return classifier.to(model.device)

    def forward(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.per_speaker:
            if mean is None or std is None:
                raise ValueError(
                    "this model normalises features per speaker (features.normalize='speaker'): pass the mean and "
                    "std of the speaker's features (Predictor.speaker_statistics computes them from recordings)"
                )
            if mean.dim() == 2:
                mean, std = mean[:, None], std[:, None]
            features = standardize(features, lengths, mean.to(features), std.to(features))
        elif self.normalized:
            features = standardize(features, lengths, self.mean, self.std)
        return output_activation(self.net(features, lengths), self.task)

    def metadata(self) -> dict[str, Any]:
        """What a deployment needs besides the graph: labels, task and what the input is."""
        return {
            "class_names": self.class_names,
            "task": self.task,
            "input": "features",
            "feature_dim": self.net.encoder.input_size,
        }


class WaveformClassifier(nn.Module):
    """A checkpoint as waveforms -> probabilities: MFCC front end, dataset normalisation, network, softmax.

    ``forward(waveforms (B, S) float32 at sample_rate, lengths (B,) int64 samples) -> (B, C)``,
    for each clip of a zero-padded batch as for the clip alone. Does not resample.
    """

    def __init__(self, settings: FeatureSettings, classifier: FeatureClassifier) -> None:
        super().__init__()
        self.settings = settings
        self.frontend = MFCCFrontend(settings)
        self.classifier = classifier
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> WaveformClassifier:
        """``ValueError`` for a checkpoint without audio feature settings."""
        return cls.from_model(RNNClassifier.from_checkpoint(path, map_location=device), str(path))

    @classmethod
    def from_model(cls, model: RNNClassifier, name: str = "model") -> WaveformClassifier:
        """Share ``model``'s network, with its ``data_config``'s feature settings, labels and statistics."""
        config = model.data_config
        if not config.get("features"):
            raise ValueError(
                f"{name}: the checkpoint has no audio feature settings (it was trained on feature sequences); "
                "use FeatureClassifier, which takes features (B, T, F) and lengths"
            )
        classifier = cls(FeatureSettings.from_dict(config["features"]), FeatureClassifier.from_model(model))
        return classifier.to(model.device)

    @property
    def sample_rate(self) -> int:
        return self.settings.rate

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    def forward(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mean``/``std``: the speaker statistics a ``normalize='speaker'`` model needs (see
        :class:`FeatureClassifier`)."""
        # Every STFT frame is kept: an exported graph's shapes cannot depend on the lengths' values.
        lengths = lengths.to(waveforms.device, torch.int64)
        features, frame_lengths = self.frontend.compute(waveforms, lengths, frames=None)
        return self.classifier(features, frame_lengths, mean, std)

    def metadata(self) -> dict[str, Any]:
        """Labels, task, sample rate, the shortest usable clip (samples) and the feature settings."""
        return {
            "class_names": self.class_names,
            "task": self.classifier.task,
            "input": "waveform",
            "sample_rate": self.sample_rate,
            "min_samples": self.settings.win_length,
            "features": self.settings.to_dict(),
        }


class EnrolledWaveformClassifier(nn.Module):
    """A model normalised per speaker, as one graph: ``forward(waveforms (B, S), lengths (B,),
    enrollment (E, S'), enrollment_lengths (E,)) -> (B, C)``. Every clip of ``waveforms`` is one
    speaker's; ``enrollment`` holds recordings of that speaker (unlabelled; the clips themselves may
    be among them), whose pooled front-end statistics normalise the clips, as training normalised
    every speaker with its own. This is what a speaker-normalised checkpoint exports as."""

    def __init__(self, classifier: WaveformClassifier) -> None:
        super().__init__()
        if not classifier.classifier.per_speaker:
            raise ValueError("EnrolledWaveformClassifier is for models trained with features.normalize='speaker'")
        self.inner = classifier
        self.eval()

    @property
    def settings(self) -> FeatureSettings:
        return self.inner.settings

    @property
    def sample_rate(self) -> int:
        return self.inner.sample_rate

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, enrollment: torch.Tensor, enrollment_lengths: torch.Tensor
    ) -> torch.Tensor:
        enrollment_lengths = enrollment_lengths.to(enrollment.device, torch.int64)
        features, frame_lengths = self.inner.frontend.compute(enrollment, enrollment_lengths, frames=None)
        mean, std = pooled_moments(features, frame_lengths)
        return self.inner(waveforms, lengths, mean, std)

    def metadata(self) -> dict[str, Any]:
        """:meth:`WaveformClassifier.metadata`, and that the graph takes a speaker's enrollment."""
        return {**self.inner.metadata(), "input": "waveform+enrollment"}


class Predictor:
    """Waveforms or audio files -> label probabilities, using the checkpoint's ``data_config``.

    >>> predictor = Predictor.from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
    >>> predictor.predict_file("yes.wav")  # {"yes": 0.97, "no": 0.01, ...}

    A model trained with ``features.normalize='speaker'`` also needs the speaker's statistics:
    ``stats, _ = predictor.speaker_statistics(that_speakers_files)`` (or ``known_speaker(name)`` for a
    voice of the training corpus), then ``predict_file(path, stats)``.
    """

    def __init__(self, model: RNNClassifier, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.classifier = WaveformClassifier.from_model(model.to(self.device).eval())
        self.settings = self.classifier.settings
        self.class_names = self.classifier.class_names
        self.per_speaker = self.classifier.classifier.per_speaker
        self._known = model.data_config.get("speaker_statistics") or {}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
        return cls(RNNClassifier.from_checkpoint(path, map_location=device), device)

    def _audio(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        samples = to_mono(np.asarray(waveform, dtype=np.float32))
        audio = resample(torch.from_numpy(np.ascontiguousarray(samples)), sample_rate, self.settings.rate)
        if audio.numel() < self.settings.win_length:
            raise ValueError(f"waveform too short: {audio.numel()} samples, need {self.settings.win_length}")
        return audio.to(self.device)

    @torch.inference_mode()
    def probabilities(
        self, waveform: torch.Tensor | np.ndarray, sample_rate: int, speaker: SpeakerStatistics | None = None
    ) -> torch.Tensor:
        """Class probabilities ``(num_classes,)`` of one waveform ``(samples,)`` or ``(samples, channels)``;
        ``speaker``: its speaker's statistics, which a ``normalize='speaker'`` model needs."""
        audio = self._audio(waveform, sample_rate)
        lengths = torch.tensor([audio.numel()], device=self.device)
        mean, std = speaker if speaker is not None else (None, None)
        return self.classifier(audio.unsqueeze(0), lengths, mean, std)[0].cpu()

    @torch.inference_mode()
    def speaker_statistics(
        self, recordings: Iterable[str | os.PathLike], skip_errors: bool = False
    ) -> tuple[SpeakerStatistics | None, int]:
        """Feature mean and deviation ``(F,)`` of one speaker's recordings (files), as training
        computed them for every speaker: over all frames of all the recordings, unlabelled (the more
        recordings, the better), and how many recordings were used. A bad file raises
        :class:`AudioError` naming it, or with ``skip_errors`` is left out; None when none was usable."""
        moments = FrameMoments(1, self.classifier.classifier.net.encoder.input_size)
        used = 0
        for path in recordings:
            try:
                audio = read_audio(path, self.settings.rate, min_samples=self.settings.win_length)
            except AudioError:
                if not skip_errors:
                    raise
                continue
            features, frames = self.classifier.frontend(audio.to(self.device).unsqueeze(0))
            moments.add(features, frames, torch.zeros(1, dtype=torch.int64))
            used += 1
        if not used:
            return None, 0
        mean, std = moments.result()
        return (torch.from_numpy(mean[0]), torch.from_numpy(std[0])), used

    def known_speaker(self, name: str) -> SpeakerStatistics:
        """Statistics of a speaker of the training corpus, stored in the checkpoint."""
        if name not in self._known:
            known = ", ".join(sorted(self._known)) or "none (the model does not normalise per speaker)"
            raise KeyError(f"no statistics for speaker {name!r} in the checkpoint; known speakers: {known}")
        entry = self._known[name]
        return torch.tensor(entry["mean"]), torch.tensor(entry["std"])

    def predict_waveform(
        self, waveform: torch.Tensor | np.ndarray, sample_rate: int, speaker: SpeakerStatistics | None = None
    ) -> dict[str, float]:
        """Label -> probability, most likely first."""
        probabilities = self.probabilities(waveform, sample_rate, speaker)
        order = torch.argsort(probabilities, descending=True).tolist()
        return {self.class_names[i]: float(probabilities[i]) for i in order}

    def predict_file(self, path: str | os.PathLike, speaker: SpeakerStatistics | None = None) -> dict[str, float]:
        """Label -> probability for an audio file of any rate and channel count; raises
        :class:`AudioError` naming the file when it cannot be used."""
        waveform = read_audio(path, self.settings.rate, min_samples=self.settings.win_length)
        return self.predict_waveform(waveform.numpy(), self.settings.rate, speaker)


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


__all__ = ["AudioError", "FeatureClassifier", "Predictor", "WaveformClassifier", "predict_split", "split_probabilities"]
