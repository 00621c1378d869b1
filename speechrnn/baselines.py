"""Order-blind and memoryless baselines that show what a recurrent model adds."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_recall_curve, precision_recall_fscore_support
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.data.storage.feature_cache import FeatureStore


def bag_of_frames(store: FeatureStore, indices: np.ndarray) -> np.ndarray:
    """Per-sequence mean and standard deviation of each feature: ``(len(indices), 2 * F)``."""
    return np.stack([np.concatenate([np.mean(store[i], 0), np.std(store[i], 0)]) for i in indices])


def bag_of_frames_accuracy(datamodule: SequenceDataModuleBase, c: float = 1.0) -> dict[str, float]:
    """Logistic regression on per-sequence feature statistics, trained on the train split;
    returns the accuracy of each split. The features must not be normalised per utterance,
    which would erase exactly the statistics this baseline reads."""
    settings = datamodule.feature_settings
    if settings is not None and settings.per_utterance:
        raise ValueError("bag-of-frames needs features.normalize='none' or 'dataset', not 'utterance'")
    datamodule.setup("fit")
    targets = datamodule.targets()
    train = datamodule.splits["train"]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    classifier.fit(bag_of_frames(datamodule.store, train), targets[train])
    return {
        split: float(accuracy_score(targets[idx], classifier.predict(bag_of_frames(datamodule.store, idx))))
        for split, idx in datamodule.splits.items()
        if len(idx)
    }


def energy_threshold_vad(datamodule: SequenceDataModuleBase) -> dict[str, dict[str, float]]:
    """Voice activity from one number per frame, the first cepstral coefficient (log energy), above
    a threshold chosen for the best frame F1 on the training split: the memoryless detector a
    recurrent model must beat. Returns precision, recall and F1 of ``speech`` for each split."""
    settings = datamodule.feature_settings
    if settings is None or settings.per_utterance:
        raise ValueError("the energy threshold needs audio features with normalize='none' or 'dataset'")
    datamodule.setup("fit")
    targets = datamodule.targets()

    def frames(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        energy = np.concatenate([np.asarray(datamodule.store[i][:, 0]) for i in indices])
        return energy, np.concatenate([targets[i] for i in indices])

    energy, truth = frames(datamodule.splits["train"])
    precision, recall, thresholds = precision_recall_curve(truth, energy)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    threshold = thresholds[int(np.argmax(f1[:-1]))]
    results = {}
    for split, indices in datamodule.splits.items():
        if len(indices):
            energy, truth = frames(indices)
            p, r, f, _ = precision_recall_fscore_support(truth, energy >= threshold, average="binary", zero_division=0)
            results[split] = {"precision": float(p), "recall": float(r), "f1": float(f), "threshold": float(threshold)}
    return results
