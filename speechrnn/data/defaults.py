"""What an audio DataModule does when its user leaves the choice to it: the augmentation and the
feature path of a training run, decided from the corpus and the machine.

The rules are measured (``benchmarks/README.md``, "Defaults against recipes"): waveform
augmentation (speed, vocal-tract length, coloured noise) simulates the new voices and channels
that a corpus of a few speakers lacks; with per-speaker normalisation it is what lifted FSDD
leave-one-speaker-out from the old defaults' 78.9 % mean to the recipe's 91.4 %. It recomputes the
front end of every clip at every epoch and needs about 40 epochs, so on a CPU it is chosen for
corpora of up to :data:`CPU_WAVEFORM_AUGMENT_MINUTES` of training audio; larger ones get
SpecAugment and time shift on the cached features, which cost nothing per epoch.
"""

from __future__ import annotations

import dataclasses

import soundfile as sf

from speechrnn.data.augment import AugmentSettings

FEATURE_AUGMENT = AugmentSettings(time_shift_ms=50, freq_masks=1, freq_mask_width=6, time_masks=1, time_mask_width=6)
"""Augmentation on cached features: a time shift of up to 50 ms and one SpecAugment mask in
frequency and one in time, 6 coefficients or frames wide at most."""

WAVEFORM_AUGMENT = dataclasses.replace(
    FEATURE_AUGMENT,
    speed_factors=(0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15),
    vtln_warp=0.15,
    coloured_noise=True,
    noise_snr_db=(10.0, 30.0),
    noise_probability=0.5,
    time_shift_ms=10,
)
""":data:`FEATURE_AUGMENT` plus speed perturbation 0.85-1.15, vocal-tract-length warps of up to
15 % and coloured noise at 10-30 dB SNR on half the clips (the new-speaker recipe, chosen on FSDD
validation speakers), with shifts of at most 10 ms: a shift to the left drops the start of the
clip, and in a corpus of clips cut at the word's onset (FSDD) up to 50 ms took the consonants that
tell "two" from "four" (leave-one-speaker-out 91.3 % -> 92.8 % mean, worst 86.4 % -> 87.8 %; no shift
at all: worse, benchmarks/README.md)."""

SPOTTING_NOISE = {"background_noise": True, "coloured_noise": False, "noise_snr_db": (5.0, 20.0),
                  "noise_probability": 0.8, "time_shift_ms": 200.0}  # fmt: skip
"""What an open-set run with background recordings changes in the augmentation it is given: the
training split's own background mixed in (instead of coloured noise) at 5-20 dB on 80 % of the clips,
and shifts of up to 200 ms. A keyword spotter hears its words over that noise and anywhere in its
window; on the embedded corpus's streams this cut false rejections at 1 false alarm per hour from
52.8 % to 11.8 % (benchmarks/README.md, "Keyword spotting")."""

CPU_WAVEFORM_AUGMENT_MINUTES = 60.0
"""On a CPU, waveform augmentation is chosen for training splits of at most an hour of audio (FSDD:
14 minutes; the shared Speech Commands slice, 12 classes: 45; the embedded corpus: 63). Its 40
epochs of 45 minutes took two CPU cores 11-13 s each (a BiGRU 2 x 128; benchmarks/README.md): an hour
keeps a default run on a CPU near ten minutes."""


def training_audio_minutes(paths: list[str], limit: float) -> float:
    """Total duration of ``paths`` in minutes from their headers, counted until it passes ``limit``
    (a large corpus is not read to its end). Unreadable files count as nothing: the feature cache
    reports them by name."""
    total = 0.0
    for path in paths:
        try:
            info = sf.info(path)
        except (sf.LibsndfileError, RuntimeError, OSError):
            continue
        if info.samplerate > 0:
            total += info.frames / info.samplerate / 60
        if total > limit:
            break
    return total


def choose_augmentation(
    augment: AugmentSettings | None,
    on_device_features: bool | None,
    training_minutes: float | None,
    on_gpu: bool,
    background: bool = False,
) -> tuple[AugmentSettings, bool, str]:
    """The augmentation and feature path of a run whose user left one or both unset (None), and
    the reason in words. ``training_minutes`` is None when it was not needed (both given).
    ``background``: an open-set run with background recordings, which mixes them in
    (:data:`SPOTTING_NOISE`) on the waveform path whatever the corpus's size, unless cached features
    are asked for."""
    if augment is not None:
        return augment, augment.needs_waveforms if on_device_features is None else on_device_features, "given"
    affordable = on_gpu or (training_minutes is not None and training_minutes <= CPU_WAVEFORM_AUGMENT_MINUTES)
    if on_device_features is False or not affordable:
        why = (
            "cached features asked for"
            if on_device_features is False
            else f"{training_minutes:.0f}+ min of training audio > {CPU_WAVEFORM_AUGMENT_MINUTES:g} min on a CPU"
        )
        if background and on_device_features is not False:
            spotting = dataclasses.replace(FEATURE_AUGMENT, **SPOTTING_NOISE)
            return spotting, True, f"SpecAugment, 200 ms shifts and the training background mixed in (open set; {why})"
        return FEATURE_AUGMENT, bool(on_device_features), f"SpecAugment and time shift ({why})"
    why = "on a GPU" if on_gpu else f"{training_minutes:.0f} min of training audio on a CPU"
    if background:
        spotting = dataclasses.replace(WAVEFORM_AUGMENT, **SPOTTING_NOISE)
        why = f"speed, vocal-tract-length, 200 ms shifts and the training background mixed in (open set; {why})"
        return spotting, True, why
    return WAVEFORM_AUGMENT, True, f"speed, vocal-tract-length and coloured-noise augmentation ({why})"
