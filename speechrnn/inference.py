"""From a checkpoint to probabilities: the one inference graph that :class:`Predictor` runs and
``export`` writes, with exactly the feature settings and statistics the model was trained on.

- :class:`FeatureClassifier`: dataset (or speaker) normalisation, network, output activation;
  ``(features (B, T, F), lengths (B,) frames) -> (B, C)``.
- :class:`WaveformClassifier`: the MFCC front end before it;
  ``(waveforms (B, S) at sample_rate, lengths (B,) samples) -> (B, C)``. Every stage is masked by
  the lengths, so each clip of a zero-padded batch gets what it gets alone.
- :class:`Predictor`: files and waveforms of any rate and channel count -> label probabilities.

Each says how it normalises in ``normalization`` (:mod:`speechrnn.normalization`): a ``speaker``
model takes the speaker's statistics with every call. Nothing here needs a DataModule; a DataModule's
split through a model is :mod:`speechrnn.split_predictions`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from speechrnn.audio_io import AudioError, read_audio, resample, to_mono
from speechrnn.features import FeatureSettings, MFCCFrontend
from speechrnn.models.classifier import RNNClassifier, output_activation
from speechrnn.models.network import SequenceClassifierNet
from speechrnn.normalization import FrameMoments, Normalization, normalization_of, pooled_moments, standardize

SpeakerStatistics = tuple[Tensor, Tensor]
"""A speaker's feature mean and deviation, ``(F,)`` each."""


class FeatureClassifier(nn.Module):
    """A network with its dataset normalisation and output activation, in eval mode:
    ``forward(features (B, T, F) float32, lengths (B,) int64 frames) -> (B, num_outputs)``.

    Softmax probabilities for classification, raw outputs for regression. Checkpoints trained on
    feature sequences export as this; :class:`WaveformClassifier` puts the MFCC front end before it.
    A model with ``normalization='speaker'`` takes each clip's speaker statistics (``mean``, ``std``:
    ``(F,)`` for the whole batch or ``(B, F)``) with every call.
    """

    def __init__(
        self,
        net: SequenceClassifierNet,
        class_names: list[str],
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        task: str = "classification",
        normalization: Normalization | None = None,
    ) -> None:
        """``normalization``: what the model was trained with; ``dataset`` applies ``feature_mean``
        and ``feature_std`` (the default when they are given, else ``none``), ``speaker`` takes the
        statistics with each call, ``utterance`` is the front end's and ``none`` applies nothing."""
        super().__init__()
        if (feature_mean is None) != (feature_std is None):
            raise ValueError("feature_mean and feature_std must be given together")
        self.normalization: Normalization = normalization or ("none" if feature_mean is None else "dataset")
        if (self.normalization == "dataset") != (feature_mean is not None):
            raise ValueError(
                f"feature_mean and feature_std go with dataset normalisation, not with {self.normalization!r}"
            )
        self.net = net
        self.class_names = list(class_names)
        self.task = task
        if feature_mean is not None:
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
            normalization_of(config),
        )
        return classifier.to(model.device)

    def forward(
        self, features: Tensor, lengths: Tensor, mean: Tensor | None = None, std: Tensor | None = None
    ) -> Tensor:
        if self.normalization == "speaker":
            if mean is None or std is None:
                raise ValueError(
                    "this model normalises features per speaker (features.normalize='speaker'): pass the mean and "
                    "std of the speaker's features (Predictor.speaker_statistics computes them from recordings)"
                )
            if mean.dim() == 2:
                mean, std = mean[:, None], std[:, None]
            features = standardize(features, lengths, mean.to(features), std.to(features))
        elif self.normalization == "dataset":
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
    for each clip of a zero-padded batch as for the clip alone. Does not resample. ``class_names``,
    ``task`` and ``normalization`` are ``classifier``'s.
    """

    def __init__(self, settings: FeatureSettings, classifier: FeatureClassifier) -> None:
        super().__init__()
        self.settings = settings
        self.sample_rate = settings.rate
        self.frontend = MFCCFrontend(settings)
        self.classifier = classifier
        self.class_names = classifier.class_names
        self.task = classifier.task
        self.normalization = classifier.normalization
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

    def forward(
        self, waveforms: Tensor, lengths: Tensor, mean: Tensor | None = None, std: Tensor | None = None
    ) -> Tensor:
        """``mean``/``std``: the speaker statistics a ``normalization='speaker'`` model needs (see
        :class:`FeatureClassifier`)."""
        # Every STFT frame is kept: an exported graph's shapes cannot depend on the lengths' values.
        lengths = lengths.to(waveforms.device, torch.int64)
        features, frame_lengths = self.frontend.compute(waveforms, lengths, frames=None)
        return self.classifier(features, frame_lengths, mean, std)

    def metadata(self) -> dict[str, Any]:
        """Labels, task, sample rate, the shortest usable clip (samples) and the feature settings."""
        return {
            "class_names": self.class_names,
            "task": self.task,
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
        if classifier.normalization != "speaker":
            raise ValueError("EnrolledWaveformClassifier is for models trained with features.normalize='speaker'")
        self.inner = classifier
        self.settings, self.sample_rate, self.task = classifier.settings, classifier.sample_rate, classifier.task
        self.eval()

    def forward(self, waveforms: Tensor, lengths: Tensor, enrollment: Tensor, enrollment_lengths: Tensor) -> Tensor:
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

    A model with ``normalization == 'speaker'`` (trained with ``features.normalize='speaker'``) also
    needs the speaker's statistics: ``stats, _ = predictor.speaker_statistics(that_speakers_files)``
    (or ``known_speaker(name)`` for a voice of the training corpus), then ``predict_file(path, stats)``.
    """

    def __init__(self, model: RNNClassifier, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.classifier = WaveformClassifier.from_model(model.to(self.device).eval())
        self.settings = self.classifier.settings
        self.class_names = self.classifier.class_names
        self.normalization: Normalization = self.classifier.normalization
        """How the model normalises features: ``speaker`` needs each speaker's statistics with every call."""
        self._known = model.data_config.get("speaker_statistics") or {}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
        return cls(RNNClassifier.from_checkpoint(path, map_location=device), device)

    def _audio(self, waveform: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        samples = to_mono(np.asarray(waveform, dtype=np.float32))
        audio = resample(torch.from_numpy(np.ascontiguousarray(samples)), sample_rate, self.settings.rate)
        if audio.numel() < self.settings.win_length:
            raise ValueError(f"waveform too short: {audio.numel()} samples, need {self.settings.win_length}")
        return audio.to(self.device)

    @torch.inference_mode()
    def probabilities(
        self, waveform: Tensor | np.ndarray, sample_rate: int, speaker: SpeakerStatistics | None = None
    ) -> Tensor:
        """Class probabilities ``(num_classes,)`` of one waveform ``(samples,)`` or ``(samples, channels)``;
        ``speaker``: its speaker's statistics, which a ``normalization='speaker'`` model needs."""
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
        moments = FrameMoments(1, self.settings.feature_dim)
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
        self, waveform: Tensor | np.ndarray, sample_rate: int, speaker: SpeakerStatistics | None = None
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


__all__ = ["AudioError", "EnrolledWaveformClassifier", "FeatureClassifier", "Predictor", "WaveformClassifier"]
