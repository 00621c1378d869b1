"""Voice activity detection end to end: prepare -> fit a causal GRU -> frame report, beside an
energy-threshold detector -> a plot of one test clip -> the same clips streamed chunk by chunk.

    python pipelines/run_vad.py [--recipes '[pipelines/configs/vad.yaml]'] [--chunk_frames 10] [-- FIT OPTIONS]

Frame-level precision, recall and F1 of ``speech`` are computed on the synthetic test speakers
(never heard in training). Streaming feeds each test clip's features to ``StreamingClassifier`` a
chunk at a time, carrying the recurrent state, and checks that every frame's decision equals the
offline one. Finished stages are skipped on a rerun (``speechrnn.stages.Pipeline``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse.typing import PositiveInt
from recipes import command_line

from speechrnn.audio_io import read_audio
from speechrnn.baselines import energy_threshold_vad
from speechrnn.io import atomic_write_bytes
from speechrnn.models.classifier import RNNClassifier
from speechrnn.models.streaming import StreamingClassifier
from speechrnn.reports import plot_voice_activity
from speechrnn.stages import Pipeline, data_section, datamodule_from_config, prepare

RECIPES = ["pipelines/configs/vad.yaml"]


def test_clips(run: Path, checkpoint: str) -> tuple[RNNClassifier, Any, list[tuple[torch.Tensor, np.ndarray, int]]]:
    """The model, the run's DataModule and each test clip as (normalised features, frame targets, index)."""
    model = RNNClassifier.from_checkpoint(checkpoint).eval()
    datamodule = datamodule_from_config(run / "config.yaml")
    datamodule.setup("test")
    clips = []
    for features, lengths, targets, indices in datamodule.dataloader("test", shuffle=False, shard=False):
        for row, length in enumerate(lengths.tolist()):
            clips.append((features[row, :length], targets[row, :length].numpy(), int(indices[row])))
    return model, datamodule, clips


def plot_and_stream(run: Path, checkpoint: str, workdir: Path, chunk_frames: int) -> dict[str, float]:
    """Stream every test clip ``chunk_frames`` at a time against the offline pass, and plot one clip."""
    model, datamodule, clips = test_clips(run, checkpoint)
    hop = datamodule.features.hop_length / datamodule.features.rate
    stream = StreamingClassifier(model.net)
    largest_difference, same_decisions, frames = 0.0, 0, 0
    with torch.inference_mode():
        for features, _, _ in clips:
            offline = model.net(features[None], torch.tensor([len(features)]))[0]
            stream.reset()
            pieces = [
                stream.push(features[None, i : i + chunk_frames])[0] for i in range(0, len(features), chunk_frames)
            ]
            streamed = torch.cat(pieces)
            largest_difference = max(largest_difference, float((streamed - offline).abs().max()))
            same_decisions += int((streamed.argmax(-1) == offline.argmax(-1)).sum())
            frames += len(features)
        features, truth, index = clips[len(clips) // 2]
        probability = model.net(features[None], torch.tensor([len(features)]))[0].softmax(-1)[:, 1].numpy()
    source = datamodule.record_of(index).source
    waveform = read_audio(source, datamodule.features.rate).numpy()
    title = f"{Path(source).name}: true and predicted speech (causal GRU)"
    plot = workdir / "vad_clip.png"
    atomic_write_bytes(plot, plot_voice_activity(waveform, datamodule.features.rate, truth, probability, hop, title))
    print(f"plot of {source}: {plot}")
    return {
        "clips": len(clips),
        "chunk_seconds": chunk_frames * hop,
        "max_abs_logit_difference": largest_difference,
        "same_decisions": same_decisions / frames,
    }


def main(
    recipes: list[str] = RECIPES,
    workdir: Path = Path("lightning_logs/pipelines/vad"),
    chunk_frames: PositiveInt = 10,
    fit_args: list[str] | None = None,
) -> dict[str, Any]:
    """Run every stage; returns the streaming check.

    Args:
        recipes: Fit configs applied in order, as ``python -m speechrnn.fit --config A --config B``.
        workdir: Where the stages' results, the run, the plot and the report go.
        chunk_frames: Frames per streamed chunk (10 = 100 ms).
        fit_args: Options for the fit (on the command line: the options after ``--``).
    """
    pipeline = Pipeline(workdir)
    data = data_section(recipes)
    pipeline.stage("prepare", lambda: prepare(data))
    fitted = pipeline.fit("fit", recipes, fit_args or [])
    energy = pipeline.stage("energy_baseline", lambda: energy_threshold_vad(datamodule_from_config(data)))
    streaming = pipeline.stage(
        "plot_and_stream",
        lambda: plot_and_stream(Path(fitted["run"]), fitted["checkpoint"], pipeline.workdir, chunk_frames),
    )
    speech = fitted["report"]["per_class"]["speech"]
    rows = [
        ["causal GRU (frames)", speech["precision"], speech["recall"], speech["f1-score"]],
        ["energy threshold (c0, tuned on train)", *(energy["test"][k] for k in ("precision", "recall", "f1"))],
    ]
    pipeline.write_table("report", ["detector", "precision", "recall", "F1"], rows, "voice activity, test speakers")
    print(
        f"streamed {streaming['clips']} test clips in {streaming['chunk_seconds'] * 1000:.0f} ms chunks: "
        f"{streaming['same_decisions']:.4%} of frame decisions equal offline, "
        f"largest logit difference {streaming['max_abs_logit_difference']:.2e}"
    )
    return streaming


if __name__ == "__main__":
    command_line(main, __doc__)
