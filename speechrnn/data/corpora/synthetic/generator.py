"""Generator of the embedded default dataset "synthetic-commands".

The corpus is a deterministic set of short command words rendered by a
source-filter (formant) synthesiser, so it sounds like speech rather than
tones:

* voiced phones excite a cascade of four time-varying formant resonators with
  a Rosenberg glottal pulse train whose pitch follows a declining, jittered
  contour;
* fricatives are band-shaped noise, stops are a silent closure followed by a
  noise burst and formant-shaped aspiration;
* formant targets glide between neighbouring phones and every amplitude change
  is a raised-cosine ramp, so there are no jumps or clicks.

The vocabulary is built so that word order matters: several words are the
reversal of another word (same phones, opposite order) and phone durations do
not depend on position, so a classifier that pools frames over the clip
cannot tell the two words of a pair apart, while a sequence model can.

Every random draw comes from a generator seeded with ``(seed, stream,
speaker, ...)``, so a clip depends only on the configuration and its own
coordinates, never on worker count, call order or global random state.

For keyword spotting (an open set) a configuration can also render
``other_words`` words that are not commands (:data:`OTHER_WORDS`, the
material of ``_unknown_``) and ``background_seconds`` of each kind of
background recording in :data:`BACKGROUND_KINDS` (babble of voices that are
not the corpus's speakers, mains hum, pink and brown noise; the material of
``_silence_`` and of test streams). With both at zero, the default, the
corpus is exactly what it was before they existed.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from speechrnn.data.corpora.folder import format_segments
from speechrnn.data.open_set import BACKGROUND_FOLDER
from speechrnn.data.splits import SPLITS
from speechrnn.io import atomic_directory

SAMPLE_RATE = 16000
GENERATOR_VERSION = "2"
CORPUS_NAME = "synthetic-commands"
MANIFEST_NAME = "manifest.csv"
GENERATION_NAME = "generation.json"
MANIFEST_COLUMNS = ("path", "label", "speaker", "split", "segments")

_SPEAKER_STREAM = 1
_CLIP_STREAM = 2
_BACKGROUND_STREAM = 3
_BABBLE_VOICE_STREAM = 4
_F0_RANGE = (80.0, 260.0)
_WORD_RMS = 0.05
_PEAK_LIMIT = 0.99
_BLOCK = 64
_FORMANT_GLIDE = 0.035
_AMPLITUDE_RAMP = 0.012
_WORD_PAD = 0.5 * _AMPLITUDE_RAMP + 0.002
_WORD_TAIL = 0.025
_FADE = 0.004
_DURATION_JITTER = 0.08
_DURATION_JITTER_LIMIT = 0.2
_MAX_DURATION_SCALE = 1.25


@dataclass(frozen=True)
class Phone:
    """Acoustic targets of one phone-like segment.

    ``formants``/``bandwidths`` (Hz, for a reference vocal tract) drive the
    voiced cascade; for consonants they are the locus the neighbouring vowels
    glide towards. ``voicing`` is the glottal source amplitude. ``noise_band``
    and ``noise_level`` describe frication (fricatives) or the release burst
    (stops); ``aspiration`` is the level of noise sent through the formant
    cascade after a stop release.
    """

    kind: str
    duration: float
    formants: tuple[float, float, float, float]
    bandwidths: tuple[float, float, float, float] = (80.0, 100.0, 150.0, 250.0)
    voicing: float = 0.0
    noise_band: tuple[float, float] | None = None
    noise_level: float = 0.0
    aspiration: float = 0.0


_NASAL_BW = (100.0, 300.0, 400.0, 500.0)

PHONES: dict[str, Phone] = {
    "a": Phone("vowel", 0.150, (800, 1200, 2600, 3500), (90, 100, 140, 250), voicing=1.0),
    "ae": Phone("vowel", 0.150, (720, 1850, 2600, 3600), (90, 110, 150, 250), voicing=1.0),
    "e": Phone("vowel", 0.140, (500, 2000, 2650, 3600), (70, 100, 150, 250), voicing=1.0),
    "i": Phone("vowel", 0.130, (290, 2450, 3100, 3800), (60, 100, 150, 250), voicing=1.0),
    "o": Phone("vowel", 0.150, (520, 900, 2550, 3500), (70, 90, 150, 250), voicing=1.0),
    "u": Phone("vowel", 0.130, (320, 900, 2350, 3400), (60, 90, 150, 250), voicing=1.0),
    "er": Phone("vowel", 0.150, (480, 1400, 1750, 3400), (70, 100, 120, 250), voicing=1.0),
    "m": Phone("nasal", 0.085, (250, 1100, 2200, 3300), _NASAL_BW, voicing=0.5),
    "n": Phone("nasal", 0.085, (250, 1650, 2600, 3400), _NASAL_BW, voicing=0.5),
    "l": Phone("approximant", 0.085, (360, 1100, 2700, 3400), (80, 150, 200, 300), voicing=0.7),
    "s": Phone("fricative", 0.125, (400, 1800, 2700, 3500), noise_band=(4200, 7800), noise_level=0.35),
    "sh": Phone("fricative", 0.125, (400, 2000, 2500, 3500), noise_band=(2300, 5200), noise_level=0.45),
    "f": Phone("fricative", 0.110, (350, 1000, 2400, 3400), noise_band=(900, 7500), noise_level=0.09),
    "p": Phone("stop", 0.100, (350, 900, 2300, 3400), noise_band=(300, 1800), noise_level=0.5, aspiration=0.5),
    "t": Phone("stop", 0.100, (400, 1800, 2700, 3500), noise_band=(3500, 7000), noise_level=0.7, aspiration=0.5),
    "k": Phone("stop", 0.100, (350, 2100, 2500, 3500), noise_band=(1400, 2800), noise_level=0.7, aspiration=0.5),
}

_STOP_CLOSURE = 0.55
_STOP_BURST = 0.13

WORDS: dict[str, tuple[str, ...]] = {
    "asi": ("a", "s", "i"),
    "isa": ("i", "s", "a"),
    "ome": ("o", "m", "e"),
    "emo": ("e", "m", "o"),
    "shut": ("sh", "u", "t"),
    "tush": ("t", "u", "sh"),
    "pan": ("p", "ae", "n"),
    "nap": ("n", "ae", "p"),
    "kilo": ("k", "i", "l", "o"),
    "olik": ("o", "l", "i", "k"),
    "mash": ("m", "ae", "sh"),
    "sham": ("sh", "ae", "m"),
    "stop": ("s", "t", "o", "p"),
    "fur": ("f", "er"),
    "nuke": ("n", "u", "k"),
}

OTHER_WORDS: dict[str, tuple[str, ...]] = {
    word: tuple(phones.split())
    for word, phones in (
        ("lune", "l u n e"), ("piku", "p i k u"), ("shol", "sh o l"), ("fam", "f ae m"),
        ("kern", "k er n"), ("nis", "n i s"), ("loma", "l o m a"), ("mefu", "m e f u"),
    )
}  # fmt: skip
"""Words that are not commands, rendered with ``other_words`` (in this order): the ``_unknown_``
material of an open-set corpus. None is a command or the reversal of one, and none is longer than
the longest command, so every clip length that holds the commands holds them."""

BACKGROUND_KINDS = ("babble", "hum", "pink", "brown")
"""Background recordings an open-set corpus writes, ``_background_noise_/<kind>.wav`` each."""
_BACKGROUND_RMS = 0.02
_BABBLE_VOICES = 6

ORDER_PAIRS: list[tuple[str, str]] = [
    ("asi", "isa"),
    ("ome", "emo"),
    ("shut", "tush"),
    ("pan", "nap"),
    ("kilo", "olik"),
    ("mash", "sham"),
]


def _max_word_seconds() -> float:
    """Upper bound of a rendered word's length over all speakers and jitter."""
    longest = max(sum(PHONES[p].duration for p in phones) for phones in [*WORDS.values(), *OTHER_WORDS.values()])
    padding = _WORD_PAD + _WORD_TAIL + _BLOCK / SAMPLE_RATE
    return longest * _MAX_DURATION_SCALE * math.exp(_DURATION_JITTER_LIMIT) + padding


MAX_WORD_SECONDS = _max_word_seconds()


@dataclass(frozen=True)
class SyntheticCorpusConfig:
    """Generation parameters of the synthetic-commands corpus.

    Attributes:
        num_speakers: Number of synthetic speakers (speaker-disjoint splits
            are drawn from them).
        repetitions: Clips per (speaker, word); the total clip count is
            ``num_speakers * len(WORDS) * repetitions``.
        clip_seconds: Length of every clip; must hold the longest word.
        onset_window_seconds: The word starts uniformly within this many
            seconds of the clip start (narrowed only if the word would not
            fit in the clip).
        snr_db: Range of the uniform background-noise SNR, relative to the
            word's power.
        val_speakers: Speakers held out for validation.
        test_speakers: Speakers held out for testing.
        seed: Root seed of every random draw.
        other_words: Non-command words also rendered (the first of
            :data:`OTHER_WORDS`), by every speaker like the commands.
        background_seconds: Length of each background recording
            (:data:`BACKGROUND_KINDS`); 0 writes none.
    """

    num_speakers: int = 30
    repetitions: int = 7
    clip_seconds: float = 1.8
    onset_window_seconds: float = 1.0
    snr_db: tuple[float, float] = (5.0, 30.0)
    val_speakers: int = 5
    test_speakers: int = 5
    seed: int = 0
    other_words: int = 0
    background_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_speakers", "repetitions", "val_speakers", "test_speakers", "seed", "other_words"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.num_speakers < 1:
            raise ValueError(f"num_speakers must be >= 1, got {self.num_speakers}")
        if self.repetitions < 1:
            raise ValueError(f"repetitions must be >= 1, got {self.repetitions}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("val_speakers", "test_speakers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.val_speakers + self.test_speakers >= self.num_speakers:
            raise ValueError(
                "val_speakers + test_speakers must be < num_speakers so that training keeps a speaker, "
                f"got {self.val_speakers} + {self.test_speakers} >= {self.num_speakers}"
            )
        clip = float(self.clip_seconds)
        if not math.isfinite(clip) or clip < MAX_WORD_SECONDS:
            raise ValueError(
                f"clip_seconds must be >= {MAX_WORD_SECONDS:.3f} so the longest word fits, got {self.clip_seconds}"
            )
        object.__setattr__(self, "clip_seconds", clip)
        window = float(self.onset_window_seconds)
        if not math.isfinite(window) or window < 0:
            raise ValueError(f"onset_window_seconds must be >= 0, got {self.onset_window_seconds}")
        object.__setattr__(self, "onset_window_seconds", window)
        try:
            low, high = (float(v) for v in self.snr_db)
        except (TypeError, ValueError):
            raise ValueError(f"snr_db must be a (low, high) pair of numbers, got {self.snr_db!r}") from None
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ValueError(f"snr_db must be finite with low <= high, got {self.snr_db!r}")
        object.__setattr__(self, "snr_db", (low, high))
        if not 0 <= self.other_words <= len(OTHER_WORDS):
            raise ValueError(f"other_words must be in [0, {len(OTHER_WORDS)}], got {self.other_words}")
        background = float(self.background_seconds)
        if not math.isfinite(background) or background < 0:
            raise ValueError(f"background_seconds must be >= 0, got {self.background_seconds}")
        object.__setattr__(self, "background_seconds", background)

    @property
    def words(self) -> dict[str, tuple[str, ...]]:
        """Every word the configuration renders and its phones: the commands, then the other words."""
        return {**WORDS, **dict(list(OTHER_WORDS.items())[: self.other_words])}

    @property
    def num_clips(self) -> int:
        """Total number of clips the configuration generates."""
        return self.num_speakers * len(self.words) * self.repetitions

    def parameters(self) -> dict[str, object]:
        """The configuration as a dict, without the open-set parameters left at zero (so a corpus
        without them is described, and fingerprinted, as before they existed)."""
        parameters = asdict(self)
        for name in ("other_words", "background_seconds"):
            if not parameters[name]:
                del parameters[name]
        return parameters

    @classmethod
    def for_clip_count(cls, clips: int, **overrides: object) -> SyntheticCorpusConfig:
        """Configuration with the fewest repetitions giving at least ``clips`` clips."""
        speakers = int(overrides.get("num_speakers", cls.num_speakers))
        if clips < 1:
            raise ValueError(f"clips must be >= 1, got {clips}")
        words = len(WORDS) + int(overrides.get("other_words", 0))  # type: ignore[call-overload]
        repetitions = max(1, math.ceil(clips / (max(speakers, 1) * words)))
        return cls(repetitions=repetitions, **overrides)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        """Stable hex digest of every parameter that influences the generated files."""
        payload = {
            "corpus": CORPUS_NAME,
            "generator_version": GENERATOR_VERSION,
            "sample_rate": SAMPLE_RATE,
            "config": self.parameters(),
        }
        encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class SpeakerProfile:
    """Voice of one synthetic speaker.

    Attributes:
        index: Speaker number within the corpus.
        register: ``"low"``, ``"mid"`` or ``"high"`` (male-, female- and
            child-like voices).
        f0: Base pitch in Hz.
        formant_scale: Multiplier of every formant (inverse vocal-tract length).
        duration_scale: Multiplier of every phone duration (> 1 is slower).
        gain_db: Loudness offset of the speaker's words.
        open_phase: Rosenberg pulse opening fraction of the glottal period.
        close_phase: Rosenberg pulse closing fraction of the glottal period.
        declination: Relative pitch fall from word start to word end.
        jitter: Standard deviation of the slow relative pitch wander.
        breathiness: Level of noise mixed into the glottal source.
        tilt: One-pole low-pass coefficient on the glottal source (spectral tilt).
    """

    index: int
    register: str
    f0: float
    formant_scale: float
    duration_scale: float
    gain_db: float
    open_phase: float
    close_phase: float
    declination: float
    jitter: float
    breathiness: float
    tilt: float


_REGISTERS = (
    ("low", (85.0, 145.0), (0.86, 0.96)),
    ("mid", (160.0, 225.0), (0.97, 1.07)),
    ("high", (215.0, 240.0), (1.06, 1.14)),
)


def speaker_profile(config: SyntheticCorpusConfig, speaker: int) -> SpeakerProfile:
    """Deterministic voice of speaker ``speaker`` under ``config.seed``.

    Registers cycle with the speaker index so that every split mixes low, mid
    and high voices; the values within a register come from the seeded RNG.
    """
    if not 0 <= speaker < config.num_speakers:
        raise ValueError(f"speaker must be in [0, {config.num_speakers}), got {speaker}")
    return _draw_profile(np.random.default_rng([config.seed, _SPEAKER_STREAM, speaker]), speaker)


def _draw_profile(rng: np.random.Generator, speaker: int) -> SpeakerProfile:
    """A voice drawn from ``rng``, in the register of index ``speaker``."""
    register, f0_range, scale_range = _REGISTERS[speaker % len(_REGISTERS)]
    return SpeakerProfile(
        index=speaker,
        register=register,
        f0=float(np.exp(rng.uniform(*np.log(f0_range)))),
        formant_scale=float(rng.uniform(*scale_range)),
        duration_scale=float(np.exp(rng.uniform(np.log(0.8), np.log(_MAX_DURATION_SCALE)))),
        gain_db=float(rng.uniform(-6.0, 6.0)),
        open_phase=float(rng.uniform(0.34, 0.46)),
        close_phase=float(rng.uniform(0.10, 0.20)),
        declination=float(rng.uniform(0.05, 0.12)),
        jitter=float(rng.uniform(0.004, 0.012)),
        breathiness=float(rng.uniform(0.01, 0.06)),
        tilt=float(rng.uniform(0.0, 0.5)),
    )


def _step(x: np.ndarray) -> np.ndarray:
    """Raised-cosine step: 0 below -0.5, 1 above 0.5."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x + 0.5, 0.0, 1.0))


def _boxes(t: np.ndarray, starts: np.ndarray, ends: np.ndarray, values: np.ndarray, ramp: float) -> np.ndarray:
    """Sum of rectangular pulses ``values[i]`` on ``[starts[i], ends[i])`` with raised-cosine edges."""
    if len(values) == 0:
        return np.zeros_like(t)
    rise = _step((t[None, :] - starts[:, None]) / ramp)
    fall = _step((t[None, :] - ends[:, None]) / ramp)
    return np.asarray(values) @ (rise - fall)


def _glide(t: np.ndarray, boundaries: np.ndarray, targets: np.ndarray, width: float) -> np.ndarray:
    """Piecewise-constant ``targets`` (one row per segment) joined by raised-cosine glides at ``boundaries``."""
    steps = _step((t[:, None] - boundaries[None, :]) / width)
    return targets[0] + steps @ np.diff(targets, axis=0)


def _rosenberg_derivative(phase: np.ndarray, open_phase: float, close_phase: float) -> np.ndarray:
    """Differentiated Rosenberg glottal flow (flow plus lip radiation), unit RMS."""
    frac = phase % 1.0
    opening = 0.5 * (1.0 - np.cos(np.pi * np.minimum(frac / open_phase, 1.0)))
    closing = np.cos(0.5 * np.pi * np.clip((frac - open_phase) / close_phase, 0.0, 1.0))
    flow = np.where(frac < open_phase, opening, closing)
    derivative = np.diff(flow, prepend=flow[0])
    return derivative / (np.sqrt(np.mean(derivative**2)) + 1e-12)


def _resonator_polynomials(formants: np.ndarray, bandwidths: np.ndarray, sample_rate: int) -> np.ndarray:
    """Denominators of the cascaded two-pole resonators, multiplied out: one row per block."""
    radius = np.exp(-np.pi * bandwidths / sample_rate)
    sections = np.stack(
        [np.ones_like(radius), -2.0 * radius * np.cos(2.0 * np.pi * formants / sample_rate), radius**2], axis=-1
    )
    denominator = np.ones((formants.shape[0], 1))
    for section in np.moveaxis(sections, 1, 0):
        product = np.zeros((denominator.shape[0], denominator.shape[1] + 2))
        for lag in range(3):
            product[:, lag : lag + denominator.shape[1]] += section[:, lag : lag + 1] * denominator
        denominator = product
    return denominator


def _formant_cascade(source: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray, sample_rate: int) -> np.ndarray:
    """Filter ``source`` through cascaded unity-DC-gain resonators updated every ``_BLOCK`` samples.

    ``formants``/``bandwidths`` hold one row per block. The cascade runs as one
    all-pole filter per block whose initial state is rebuilt from the previous
    outputs, so the recursion continues across coefficient changes and slowly
    moving formants produce smooth glides.
    """
    denominators = _resonator_polynomials(formants, bandwidths, sample_rate)
    gains = denominators.sum(axis=1)
    order = denominators.shape[1] - 1
    out = np.empty_like(source)
    history = np.zeros(order)
    for block, (denominator, gain) in enumerate(zip(denominators, gains, strict=True)):
        window = slice(block * _BLOCK, (block + 1) * _BLOCK)
        state = -np.correlate(denominator[1:], history, "full")[order - 1 :]
        out[window], _ = signal.lfilter([gain], denominator, source[window], zi=state)
        history = out[window][: -order - 1 : -1]
    return out


@functools.lru_cache(maxsize=4096)
def _band_sos(band: tuple[float, float], scale: float, sample_rate: int) -> np.ndarray:
    """Band-pass filter for frication or burst noise, scaled to the speaker's vocal tract.

    Callers round ``scale`` to two decimals so the design is cached.
    """
    nyquist = 0.5 * sample_rate
    high = min(band[1] * scale, 0.94 * nyquist)
    low = min(band[0] * scale, 0.7 * high)
    return signal.butter(3, [low, high], btype="bandpass", fs=sample_rate, output="sos")


def _shaped_noise(rng: np.random.Generator, length: int, sos: np.ndarray) -> np.ndarray:
    """Unit-RMS Gaussian noise filtered by ``sos``."""
    noise = signal.sosfilt(sos, rng.standard_normal(length + 256))[256:]
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _noise_envelope(phone: Phone, start: float, duration: float, level: float, t: np.ndarray) -> np.ndarray:
    """Amplitude of a fricative's frication (ramped box) or a stop's release burst (sharp attack, fast decay)."""
    if phone.kind == "fricative":
        return _boxes(t, np.array([start]), np.array([start + duration]), np.array([level]), 2 * _AMPLITUDE_RAMP)
    since = t - (start + _STOP_CLOSURE * duration)
    decay = _STOP_BURST * duration / 3.0
    return 2.0 * level * _step(since / 0.002) * np.exp(-np.maximum(since, 0.0) / decay)


def synthesize_segments(
    segments: Sequence[str],
    speaker: SpeakerProfile,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Render a sequence of phone names (keys of ``PHONES``) as one utterance.

    The result is float32 mono at ``speaker``'s loudness, with only the few
    milliseconds of padding needed for the onset and offset ramps. Utterance
    level variation (durations, pitch, formants, amplitudes) is drawn from
    ``rng``.
    """
    return _synthesize(segments, speaker, rng, sample_rate)[0]


def _synthesize(
    segments: Sequence[str], speaker: SpeakerProfile, rng: np.random.Generator, sample_rate: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """The utterance and where its speech is, ``(start, end)`` in seconds: from the first sound
    (after the silent closure of a leading stop) to the end of the last phone."""
    unknown = [name for name in segments if name not in PHONES]
    if unknown or not segments:
        raise ValueError(f"segments must be a non-empty sequence of {sorted(PHONES)}, got {list(segments)!r}")
    phones = [PHONES[name] for name in segments]
    count = len(phones)

    jitter = np.clip(rng.normal(0.0, _DURATION_JITTER, count), -_DURATION_JITTER_LIMIT, _DURATION_JITTER_LIMIT)
    durations = np.array([p.duration for p in phones]) * speaker.duration_scale * np.exp(jitter)
    edges = _WORD_PAD + np.concatenate([[0.0], np.cumsum(durations)])
    starts, ends = edges[:-1], edges[1:]
    length = int(math.ceil((edges[-1] + _WORD_TAIL) * sample_rate))
    length = -(-length // _BLOCK) * _BLOCK
    t = np.arange(length) / sample_rate

    utterance_scale = speaker.formant_scale * math.exp(rng.normal(0.0, 0.015))
    targets = np.array([p.formants for p in phones]) * utterance_scale * np.exp(rng.normal(0.0, 0.02, (count, 1)))
    targets = np.minimum(targets, 0.45 * sample_rate)
    widths = np.array([p.bandwidths for p in phones]) * np.exp(rng.normal(0.0, 0.05, (count, 1)))
    block_times = (np.arange(length // _BLOCK) + 0.5) * _BLOCK / sample_rate
    formants = _glide(block_times, edges[1:-1], targets, _FORMANT_GLIDE)
    bandwidths = _glide(block_times, edges[1:-1], widths, _FORMANT_GLIDE)

    voicing = np.array([p.voicing for p in phones]) * np.exp(rng.normal(0.0, 0.08, count))
    voicing_track = _boxes(t, starts, ends, voicing, _AMPLITUDE_RAMP)

    f0_utterance = speaker.f0 * math.exp(rng.normal(0.0, 0.025))
    decline = speaker.declination * rng.uniform(0.6, 1.4)
    progress = np.clip((t - edges[0]) / (edges[-1] - edges[0]), 0.0, 1.0)
    knots = np.arange(0.0, t[-1] + 0.05, 0.025)
    wander = np.interp(t, knots, rng.normal(0.0, speaker.jitter, len(knots)))
    f0 = np.clip(f0_utterance * (1.0 + decline * (0.5 - progress)) * (1.0 + wander), *_F0_RANGE)
    phase = rng.uniform() + np.cumsum(f0) / sample_rate
    glottal = _rosenberg_derivative(phase, speaker.open_phase, speaker.close_phase)
    glottal = signal.lfilter([1.0 - speaker.tilt], [1.0, -speaker.tilt], glottal)
    glottal /= np.sqrt(np.mean(glottal**2)) + 1e-12

    stop_index = [i for i, p in enumerate(phones) if p.kind == "stop"]
    stop_starts = np.array([starts[i] for i in stop_index])
    stop_lengths = np.array([durations[i] for i in stop_index])
    release = stop_starts + _STOP_CLOSURE * stop_lengths
    aspiration_track = _boxes(
        t,
        release + 0.5 * _STOP_BURST * stop_lengths,
        stop_starts + stop_lengths,
        np.array([phones[i].aspiration for i in stop_index]),
        0.5 * _AMPLITUDE_RAMP,
    )

    noise = rng.standard_normal(length)
    source = voicing_track * (glottal + speaker.breathiness * 4.0 * noise) + aspiration_track * noise
    voiced = _formant_cascade(source, formants, bandwidths, sample_rate)
    reference = voiced[voicing_track > 0.5 * voicing.max()] if voicing.max() > 0 else voiced
    voiced /= np.sqrt(np.mean(reference**2)) + 1e-12

    out = voiced
    for phone, start, duration in zip(phones, starts, durations, strict=True):
        if phone.noise_band is not None:
            level = phone.noise_level * math.exp(rng.normal(0.0, 0.1))
            sos = _band_sos(phone.noise_band, round(utterance_scale, 2), sample_rate)
            out += _noise_envelope(phone, start, duration, level, t) * _shaped_noise(rng, length, sos)

    word_span = out[int(edges[0] * sample_rate) : int(math.ceil(edges[-1] * sample_rate))]
    gain = _WORD_RMS * 10.0 ** ((speaker.gain_db + rng.normal(0.0, 1.0)) / 20.0)
    out *= gain / (np.sqrt(np.mean(word_span**2)) + 1e-12)
    fade = min(int(_FADE * sample_rate), length // 2)
    ramp = _step(np.linspace(-0.5, 0.5, fade))
    out[:fade] *= ramp
    out[length - fade :] *= ramp[::-1]
    speech_start = starts[0] + (_STOP_CLOSURE * durations[0] if phones[0].kind == "stop" else 0.0)
    return out.astype(np.float32), (float(speech_start), float(edges[-1]))


def synthesize_word(
    word: str,
    speaker: SpeakerProfile,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Render ``word`` (a key of ``WORDS`` or ``OTHER_WORDS``) alone, as float32 mono without noise or clip padding."""
    phones = WORDS.get(word) or OTHER_WORDS.get(word)
    if phones is None:
        raise ValueError(f"word must be one of {sorted(WORDS)} or {sorted(OTHER_WORDS)}, got {word!r}")
    return _synthesize(phones, speaker, rng, sample_rate)[0]


def _background_noise(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS noise with a random spectral slope between mildly coloured and pink."""
    slope = rng.uniform(0.4, 1.1)
    bins = length // 2 + 1
    spectrum = rng.standard_normal(bins) + 1j * rng.standard_normal(bins)
    frequencies = np.fft.rfftfreq(length, 1.0 / sample_rate)
    spectrum *= np.maximum(frequencies, 60.0) ** (-0.5 * slope)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, length)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _coloured_noise(rng: np.random.Generator, length: int, slope: float, sample_rate: int) -> np.ndarray:
    """Unit-RMS noise whose power falls as ``frequency ** -slope`` (1: pink, 2: brown), above 20 Hz."""
    bins = length // 2 + 1
    spectrum = rng.standard_normal(bins) + 1j * rng.standard_normal(bins)
    spectrum *= np.maximum(np.fft.rfftfreq(length, 1.0 / sample_rate), 20.0) ** (-0.5 * slope)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, length)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _hum(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Mains hum: a 50 or 60 Hz fundamental with decaying odd and even harmonics, slowly wavering
    in pitch and level, over faint pink noise."""
    t = np.arange(length) / sample_rate
    mains = float(rng.choice([50.0, 60.0]))
    knots = np.arange(0.0, t[-1] + 2.0, 1.0)
    drift = 1.0 + np.interp(t, knots, rng.normal(0.0, 0.002, len(knots)))
    level = 1.0 + np.interp(t, knots, rng.normal(0.0, 0.15, len(knots)))
    phase = 2.0 * np.pi * mains * np.cumsum(drift) / sample_rate
    harmonics = sum(rng.uniform(0.3, 1.0) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k in range(1, 9))
    hum = level * harmonics / (np.sqrt(np.mean(harmonics**2)) + 1e-12)
    return hum + 0.1 * _coloured_noise(rng, length, 1.0, sample_rate)


def _babble(config: SyntheticCorpusConfig, rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Overlapping chatter of :data:`_BABBLE_VOICES` voices that are none of the corpus's speakers:
    phone strings of two to four phones that spell no word of the corpus, with pauses between them."""
    spoken = {*WORDS.values(), *OTHER_WORDS.values()}
    names = sorted(PHONES)
    out = np.zeros(length)
    for voice in range(_BABBLE_VOICES):
        profile = _draw_profile(np.random.default_rng([config.seed, _BABBLE_VOICE_STREAM, voice]), voice)
        start = int(rng.uniform(0.0, 0.5) * sample_rate)
        while start < length:
            phones = tuple(str(p) for p in rng.choice(names, size=int(rng.integers(2, 5))))
            if phones in spoken:
                continue
            utterance = _synthesize(phones, profile, rng, sample_rate)[0]
            end = min(start + len(utterance), length)
            out[start:end] += utterance[: end - start] * 10.0 ** (rng.uniform(-6.0, 3.0) / 20.0)
            start = end + int(rng.uniform(0.05, 0.6) * sample_rate)
    return out


def render_background(config: SyntheticCorpusConfig, kind: str) -> np.ndarray:
    """One background recording (``kind`` of :data:`BACKGROUND_KINDS`) of ``config.background_seconds``,
    float32 mono at RMS :data:`_BACKGROUND_RMS`; deterministic from ``config.seed`` and ``kind``."""
    if kind not in BACKGROUND_KINDS:
        raise ValueError(f"kind must be one of {BACKGROUND_KINDS}, got {kind!r}")
    length = round(config.background_seconds * SAMPLE_RATE)
    if length < 1:
        raise ValueError(f"background_seconds must be > 0 to render a background, got {config.background_seconds}")
    rng = np.random.default_rng([config.seed, _BACKGROUND_STREAM, _word_key(kind)])
    if kind == "babble":
        audio = _babble(config, rng, length, SAMPLE_RATE)
    elif kind == "hum":
        audio = _hum(rng, length, SAMPLE_RATE)
    else:
        audio = _coloured_noise(rng, length, 1.0 if kind == "pink" else 2.0, SAMPLE_RATE)
    audio *= _BACKGROUND_RMS / (np.sqrt(np.mean(audio**2)) + 1e-12)
    return np.clip(audio, -_PEAK_LIMIT, _PEAK_LIMIT).astype(np.float32)


def background_paths(config: SyntheticCorpusConfig) -> list[str]:
    """Paths (relative to the corpus folder) of the background recordings ``config`` writes."""
    if not config.background_seconds:
        return []
    return [f"{BACKGROUND_FOLDER}/{kind}.wav" for kind in BACKGROUND_KINDS]


def _write_background(config: SyntheticCorpusConfig, kind: str, directory: str) -> None:
    path = os.path.join(directory, BACKGROUND_FOLDER, f"{kind}.wav")
    sf.write(path, render_background(config, kind), SAMPLE_RATE, subtype="PCM_16")


def _word_key(word: str) -> int:
    """Stable integer identifying ``word`` in seed sequences."""
    return zlib.crc32(word.encode("utf-8"))


@dataclass(frozen=True)
class RenderedClip:
    """A synthesised clip with the layout it was rendered with."""

    audio: np.ndarray
    onset_seconds: float
    word_seconds: float
    snr_db: float
    speech: tuple[float, float]
    """Where the word is audible in the clip, ``(start, end)`` in seconds (the voice activity truth)."""


def render_clip(config: SyntheticCorpusConfig, speaker: int, word: str, repetition: int) -> RenderedClip:
    """Render one clip and report its word onset, word length, SNR and speech span."""
    words = config.words
    if word not in words:
        raise ValueError(f"word must be one of {sorted(words)}, got {word!r}")
    if repetition < 0:
        raise ValueError(f"repetition must be >= 0, got {repetition}")
    profile = speaker_profile(config, speaker)
    rng = np.random.default_rng([config.seed, _CLIP_STREAM, speaker, _word_key(word), repetition])
    voice, (speech_start, speech_end) = _synthesize(words[word], profile, rng, SAMPLE_RATE)
    length = int(round(config.clip_seconds * SAMPLE_RATE))
    latest = min(config.onset_window_seconds, (length - len(voice)) / SAMPLE_RATE)
    start = min(int(round(rng.uniform(0.0, max(latest, 0.0)) * SAMPLE_RATE)), max(length - len(voice), 0))
    snr = float(rng.uniform(*config.snr_db))
    word_power = float(np.mean(voice.astype(np.float64) ** 2))
    clip = _background_noise(rng, length, SAMPLE_RATE) * math.sqrt(word_power / 10.0 ** (snr / 10.0))
    clip[start : start + len(voice)] += voice[: length - start]
    peak = float(np.max(np.abs(clip)))
    if peak > _PEAK_LIMIT:
        clip *= _PEAK_LIMIT / peak
    onset = start / SAMPLE_RATE
    speech = (onset + speech_start, min(onset + speech_end, length / SAMPLE_RATE))
    return RenderedClip(clip.astype(np.float32), onset, len(voice) / SAMPLE_RATE, snr, speech)


def synthesize_clip(config: SyntheticCorpusConfig, speaker: int, word: str, repetition: int) -> np.ndarray:
    """Full float32 clip of ``word`` by ``speaker``: random onset, background noise, safe peak level.

    Deterministic: depends only on ``config`` and the clip's coordinates.
    """
    return render_clip(config, speaker, word, repetition).audio


def speaker_label(config: SyntheticCorpusConfig, speaker: int) -> str:
    """Manifest name of a speaker, e.g. ``spk07``."""
    width = max(2, len(str(config.num_speakers - 1)))
    return f"spk{speaker:0{width}d}"


def speaker_split(config: SyntheticCorpusConfig, speaker: int) -> str:
    """Split of a speaker: the last speakers are test, the ones before them val, the rest train."""
    train_end = config.num_speakers - config.val_speakers - config.test_speakers
    if speaker < train_end:
        return "train"
    if speaker < train_end + config.val_speakers:
        return "val"
    return "test"


def split_speakers(config: SyntheticCorpusConfig) -> dict[str, list[str]]:
    """Speaker labels of each split, in speaker order."""
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for speaker in range(config.num_speakers):
        splits[speaker_split(config, speaker)].append(speaker_label(config, speaker))
    return splits


def _clip_path(config: SyntheticCorpusConfig, speaker: int, word: str, repetition: int) -> str:
    width = max(2, len(str(config.repetitions - 1)))
    return f"{word}/{speaker_label(config, speaker)}_{word}_{repetition:0{width}d}.wav"


def _write_speaker(config: SyntheticCorpusConfig, speaker: int, directory: str) -> list[tuple[str, ...]]:
    """Write every clip of one speaker under ``directory``; return their manifest rows."""
    rows = []
    label, split = speaker_label(config, speaker), speaker_split(config, speaker)
    for word in config.words:
        for repetition in range(config.repetitions):
            path = _clip_path(config, speaker, word, repetition)
            clip = render_clip(config, speaker, word, repetition)
            sf.write(os.path.join(directory, path), clip.audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append((path, word, label, split, format_segments([clip.speech])))
    return rows


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def corpus_is_current(root: str | os.PathLike, config: SyntheticCorpusConfig) -> bool:
    """Whether ``root`` holds a complete corpus generated with ``config`` by this generator version."""
    root = Path(root)
    metadata, manifest = root / GENERATION_NAME, root / MANIFEST_NAME
    if not (metadata.is_file() and manifest.is_file()):
        return False
    try:
        recorded = json.loads(metadata.read_text())
        rows = _read_manifest(manifest)
    except (OSError, ValueError, csv.Error):
        return False
    if not isinstance(recorded, dict) or recorded.get("fingerprint") != config.fingerprint():
        return False
    if len(rows) != config.num_clips or not all((root / path).is_file() for path in background_paths(config)):
        return False
    return all(row.get("path") and (root / row["path"]).is_file() for row in rows)


def generate_corpus(
    root: str | os.PathLike,
    config: SyntheticCorpusConfig = SyntheticCorpusConfig(),
    num_workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Generate the corpus under ``root`` unless an identical one is already there; return the manifest path.

    Layout: ``root/<word>/<speaker>_<word>_<rep>.wav`` (16 kHz mono PCM_16),
    ``root/manifest.csv`` (``path,label,speaker,split,segments``, paths relative
    to ``root``, sorted by path; ``segments`` is where the word is audible) and ``root/generation.json`` (configuration,
    fingerprint, splits and vocabulary).

    Idempotent: a current corpus (same fingerprint, manifest and every file
    present) is left untouched. Atomic: the corpus is built in a temporary
    sibling directory, ``generation.json`` last, then swapped into place, so
    an interrupted run never leaves a folder that looks complete.
    """
    root = Path(root)
    manifest = root / MANIFEST_NAME
    if corpus_is_current(root, config):
        return manifest
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    workers = min(num_workers or os.cpu_count() or 1, config.num_speakers)

    started = time.perf_counter()
    with atomic_directory(root, replace=True) as staging:
        for word in config.words:
            (staging / word).mkdir()
        speakers = range(config.num_speakers)
        rows: list[tuple[str, ...]] = []
        kinds = BACKGROUND_KINDS if config.background_seconds else ()
        if kinds:
            (staging / BACKGROUND_FOLDER).mkdir()
        if workers == 1:
            for kind in kinds:
                _write_background(config, kind, str(staging))
            chunks = (_write_speaker(config, speaker, str(staging)) for speaker in speakers)
            for done, chunk in enumerate(chunks, 1):
                rows.extend(chunk)
                _report(progress, done, config.num_speakers, started)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                backgrounds = [pool.submit(_write_background, config, kind, str(staging)) for kind in kinds]
                chunks = pool.map(_write_speaker, [config] * len(speakers), speakers, [str(staging)] * len(speakers))
                for done, chunk in enumerate(chunks, 1):
                    rows.extend(chunk)
                    _report(progress, done, config.num_speakers, started)
                for job in backgrounds:
                    job.result()
        rows.sort()
        with (staging / MANIFEST_NAME).open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(rows)
        metadata = {
            "corpus": CORPUS_NAME,
            "generator_version": GENERATOR_VERSION,
            "fingerprint": config.fingerprint(),
            "sample_rate": SAMPLE_RATE,
            "num_clips": len(rows),
            "config": config.parameters(),
            "splits": split_speakers(config),
            "words": {word: list(phones) for word, phones in WORDS.items()},
            "order_pairs": [list(pair) for pair in ORDER_PAIRS],
        }
        if config.other_words:
            metadata["other_words"] = {
                word: list(config.words[word]) for word in list(OTHER_WORDS)[: config.other_words]
            }
        if kinds:
            metadata["background"] = background_paths(config)
        (staging / GENERATION_NAME).write_text(json.dumps(metadata, indent=2) + "\n")
    return manifest


def _report(enabled: bool, done: int, total: int, started: float) -> None:
    if enabled:
        elapsed = time.perf_counter() - started
        print(f"[{CORPUS_NAME}] {done}/{total} speakers, {elapsed:.1f}s", file=sys.stderr, flush=True)
