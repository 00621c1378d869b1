"""Classify recordings from a checkpoint alone, with exactly the feature settings it was trained on."""

from __future__ import annotations

import os

import numpy as np
import torch

from speechrnn.audio import AudioError, read_audio, resample, to_mono
from speechrnn.features import FeatureSettings, MFCCFrontend
from speechrnn.models.classifier import RNNClassifier


class Predictor:
    """Waveforms or audio files -> label probabilities, using the checkpoint's ``data_config``.

    >>> predictor = Predictor.from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
    >>> predictor.predict_file("yes.wav")  # {"yes": 0.97, "no": 0.01, ...}
    """

    def __init__(self, model: RNNClassifier, device: str | torch.device = "cpu") -> None:
        config = model.data_config
        if not config.get("features"):
            raise ValueError("this checkpoint has no audio feature settings (it was trained on feature sequences)")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.settings = FeatureSettings.from_dict(config["features"])
        self.frontend = MFCCFrontend(self.settings).to(self.device)
        mean, std = config.get("feature_mean"), config.get("feature_std")
        self.mean = None if mean is None else torch.tensor(mean, device=self.device)
        self.std = None if std is None else torch.tensor(std, device=self.device)
        self.class_names = model.class_names

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
        return cls(RNNClassifier.from_checkpoint(path, map_location=device), device)

    @torch.inference_mode()
    def probabilities(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """Class probabilities ``(num_classes,)`` of one waveform ``(samples,)`` or ``(samples, channels)``."""
        samples = to_mono(np.asarray(waveform, dtype=np.float32))
        audio = resample(torch.from_numpy(np.ascontiguousarray(samples)), sample_rate, self.settings.rate)
        if audio.numel() < self.settings.win_length:
            raise ValueError(f"waveform too short: {audio.numel()} samples, need {self.settings.win_length}")
        features, lengths = self.frontend(audio.to(self.device).unsqueeze(0))
        if self.mean is not None:
            features = (features - self.mean) / self.std
        return self.model(features, lengths).float().softmax(-1)[0].cpu()

    def predict_waveform(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> dict[str, float]:
        """Label -> probability, most likely first."""
        probabilities = self.probabilities(waveform, sample_rate)
        order = torch.argsort(probabilities, descending=True).tolist()
        return {self.class_names[i]: float(probabilities[i]) for i in order}

    def predict_file(self, path: str | os.PathLike) -> dict[str, float]:
        """Label -> probability for an audio file of any rate and channel count; raises
        :class:`AudioError` naming the file when it cannot be used."""
        waveform = read_audio(path, self.settings.rate, min_samples=self.settings.win_length)
        return self.predict_waveform(waveform.numpy(), self.settings.rate)


__all__ = ["AudioError", "Predictor"]
