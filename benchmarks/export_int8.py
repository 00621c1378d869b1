"""Float32 against int8 for an exported keyword spotter (issue 29): accuracy on the run's test split
end to end from waveforms through onnxruntime (the offline graph, and the streaming graph's output
after a clip's last chunk), model size, and latency per streaming chunk on this CPU.

The checkpoint is exported four times (``speechrnn export --format onnx`` with and without
``--streaming`` and ``--quantize int8``); the test clips are read from the run's data (its
``config.yaml`` beside ``checkpoints/``) as files, resampled to the model's rate, and nothing else
of speechrnn runs on them: the front end, normalisation and network are the exported graphs'. A
speaker-normalised model's speakers are normalised as training normalised them, with the
statistics of each speaker's clips (the offline graph's enrollment input; the streaming graph's
``NAME.enroll.onnx``). Streamed clips are zero-padded to whole chunks. The PyTorch offline model
(``EnrolledWaveformClassifier`` / ``WaveformClassifier``) on the same clips is the reference.

Latency: ``--latency_chunks`` chunks of the test clips laid end to end, pushed one at a time through
``OnnxStream`` with ``--threads`` onnxruntime threads (one: a core of an edge device); the median and
90th percentile per chunk. The offline graph is timed per one-second clip the same way.

    SPEECHRNN_DATA=/work/shared/data python benchmarks/export_int8.py \\
        --ckpt /work/exp/kws_uni/lightning_logs/version_0/checkpoints/last.ckpt --out /work/exp/kws_uni/onnx
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from common import command_line, load_line, machine_lines

from speechrnn.audio_io import read_audio
from speechrnn.cli import parse_with_run_data
from speechrnn.evaluate import build_parser
from speechrnn.export import export_onnx, exportable
from speechrnn.inference import EnrolledWaveformClassifier
from speechrnn.streaming_onnx import OnnxStream, session


def padded(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Clips zero-padded to the longest, and their lengths."""
    batch = np.zeros((len(clips), max(len(c) for c in clips)), np.float32)
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = clip
    return batch, np.array([len(c) for c in clips], np.int64)


def by_speaker(speakers: list[str | None], batch: int = 32) -> list[list[int]]:
    """Clip indices grouped by speaker (in batches of ``batch`` when speakers are unknown)."""
    if any(s is None for s in speakers):
        return [list(range(i, min(i + batch, len(speakers)))) for i in range(0, len(speakers), batch)]
    groups: dict[str, list[int]] = defaultdict(list)
    for index, speaker in enumerate(speakers):
        groups[speaker].append(index)
    return list(groups.values())


def offline_probabilities(model: Path, clips: list[np.ndarray], groups: list[list[int]], threads: int) -> np.ndarray:
    """Each clip through the offline graph, a group (one speaker, its own enrollment) per call."""
    runner = session(model, threads)
    enrolled = len(runner.get_inputs()) == 4
    out: list[np.ndarray] = [np.empty(0)] * len(clips)
    for group in groups:
        waveforms, lengths = padded([clips[i] for i in group])
        feed = {"waveforms": waveforms, "lengths": lengths}
        if enrolled:
            feed |= {"enrollment": waveforms, "enrollment_lengths": lengths}
        for index, row in zip(group, runner.run(None, feed)[0], strict=True):
            out[index] = row
    return np.stack(out)


def streamed_probabilities(model: Path, clips: list[np.ndarray], groups: list[list[int]], threads: int) -> np.ndarray:
    """Each clip streamed chunk by chunk: the probabilities after its last chunk."""
    stream = OnnxStream(model, threads)
    out: list[np.ndarray] = [np.empty(0)] * len(clips)
    for group in groups:
        if stream.needs_speaker:
            stream.enroll([clips[i] for i in group])
        for index in group:
            out[index] = stream.run(clips[index])[-1, 0]
    return np.stack(out)


@torch.inference_mode()
def pytorch_probabilities(ckpt: Path, clips: list[np.ndarray], groups: list[list[int]]) -> np.ndarray:
    model = exportable(ckpt)
    out: list[np.ndarray] = [np.empty(0)] * len(clips)
    for group in groups:
        waveforms, lengths = (torch.from_numpy(a) for a in padded([clips[i] for i in group]))
        extra = (waveforms, lengths) if isinstance(model, EnrolledWaveformClassifier) else ()
        for index, row in zip(group, model(waveforms, lengths, *extra).numpy(), strict=True):
            out[index] = row
    return np.stack(out)


def chunk_latency_ms(
    model: Path, audio: np.ndarray, chunks: int, threads: int, speaker: list[np.ndarray]
) -> list[float]:
    """Milliseconds per ``push`` of ``chunks`` consecutive chunks of ``audio`` (after one warm-up chunk)."""
    stream = OnnxStream(model, threads)
    if stream.needs_speaker:
        stream.enroll(speaker)
    size = stream.chunk_samples
    stream.push(audio[:size])
    stream.reset()
    times = []
    for index in range(chunks):
        chunk = audio[index * size : (index + 1) * size]
        start = time.perf_counter()
        stream.push(chunk)
        times.append(1000 * (time.perf_counter() - start))
    return times


def clip_latency_ms(model: Path, clips: list[np.ndarray], threads: int) -> list[float]:
    """Milliseconds per clip (batch of one, its own enrollment) through the offline graph."""
    runner = session(model, threads)
    enrolled = len(runner.get_inputs()) == 4
    times = []
    for clip in [clips[0], *clips]:
        waveforms, lengths = padded([clip])
        feed = {"waveforms": waveforms, "lengths": lengths}
        if enrolled:
            feed |= {"enrollment": waveforms, "enrollment_lengths": lengths}
        start = time.perf_counter()
        runner.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
    return times[1:]


def main(
    ckpt: Path,
    out: Path | None = None,
    split: str = "test",
    chunk_ms: float = 100.0,
    latency_chunks: int = 1000,
    threads: int = 1,
    limit: int | None = None,
) -> None:
    """
    Args:
        ckpt: A unidirectional audio checkpoint (its run's ``config.yaml`` gives the data).
        out: Folder for the exported files (default: a temporary folder).
        split: The run's split to score.
        chunk_ms: Audio per streaming chunk.
        latency_chunks: Chunks timed per streaming model.
        threads: onnxruntime intra-op threads for every measurement.
        limit: Score only the split's first clips (a smoke test).
    """
    for line in machine_lines():
        print(line)
    folder = Path(out or tempfile.mkdtemp(prefix="export-int8-"))
    files = {}
    for streaming in (False, True):
        for quantize in (None, "int8"):
            name = f"{'streaming' if streaming else 'offline'}_{quantize or 'float32'}"
            start = time.perf_counter()
            files[name] = export_onnx(
                ckpt, folder / f"{name}.onnx", streaming=streaming, chunk_ms=chunk_ms, quantize=quantize
            )
            print(f"exported {files[name]} in {time.perf_counter() - start:.0f} s")

    parser = build_parser()
    datamodule = parser.instantiate_classes(parse_with_run_data(parser, ["--ckpt", str(ckpt)])).data
    datamodule.setup("test")
    records = [datamodule.record_of(int(i)) for i in datamodule.splits[split]][:limit]
    meta = OnnxStream(files["streaming_float32"]).metadata
    rate, classes = meta["sample_rate"], meta["class_names"]
    window = round(meta["features"]["win_ms"] * rate / 1000)
    clips = [read_audio(r.source, rate, min_samples=window).numpy() for r in records]
    chunk = meta["chunk_samples"]
    targets = np.array([classes.index(r.label) for r in records])
    groups = by_speaker([r.speaker for r in records])
    minutes = sum(len(c) for c in clips) / rate / 60
    print(
        f"{split} split: {len(clips)} clips, {len(groups)} speaker groups, {minutes:.1f} min; "
        f"{sum(len(c) % chunk != 0 for c in clips)} clips zero-padded to whole chunks when streamed"
    )

    reference = pytorch_probabilities(ckpt, clips, groups)
    results = {"pytorch offline float32": reference}
    for name, path in files.items():
        run = streamed_probabilities if name.startswith("streaming") else offline_probabilities
        start = time.perf_counter()
        results[name] = run(path, clips, groups, threads)
        print(f"scored {name} in {time.perf_counter() - start:.0f} s")

    audio = np.concatenate(clips)
    needed = (latency_chunks + 1) * chunk
    audio = np.tile(audio, -(-needed // len(audio)))
    speaker = [clips[i] for i in groups[0]]
    latency = {}
    for name, path in files.items():
        if name.startswith("streaming"):
            latency[name] = chunk_latency_ms(path, audio, latency_chunks, threads, speaker)
        else:
            latency[name] = clip_latency_ms(path, clips[: min(len(clips), 200)], threads)

    run_metrics = Path(ckpt).resolve().parent.parent / "test_metrics.json"
    if run_metrics.is_file() and split == "test":
        print(f"the run's own test report (training path, PyTorch): {json.loads(run_metrics.read_text())}")
    predicted = {name: p.argmax(1) for name, p in results.items()}
    print()
    print(
        f"| model | accuracy % | agrees with PyTorch % | max prob. diff. | size kB | latency ms "
        f"(median / p90, {threads} thread{'s' * (threads > 1)}) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, probabilities in results.items():
        accuracy = 100 * float((predicted[name] == targets).mean())
        agree = 100 * float((predicted[name] == predicted["pytorch offline float32"]).mean())
        difference = float(np.abs(probabilities - reference).max())
        size = f"{files[name].stat().st_size / 1e3:.0f}" if name in files else ""
        times = latency.get(name)
        per = "chunk" if name.startswith("streaming") else "clip"
        timing = f"{statistics.median(times):.2f} / {np.percentile(times, 90):.2f} per {per}" if times else ""
        print(f"| {name} | {accuracy:.1f} | {agree:.1f} | {difference:.3f} | {size} | {timing} |")
    for kind in ("offline", "streaming"):
        gap = 100 * float(
            (predicted[f"{kind}_int8"] == targets).mean() - (predicted[f"{kind}_float32"] == targets).mean()
        )
        print(f"{kind}: int8 - float32 accuracy {gap:+.1f} points")
    companion = folder / "streaming_float32.enroll.onnx"
    if companion.exists():
        print(f"enrollment graph (float32, front end only): {companion.stat().st_size / 1e3:.0f} kB")
    print(f"chunk: {chunk_ms:.0f} ms ({meta['chunk_samples']} samples)")
    print(load_line("at end"))


if __name__ == "__main__":
    command_line(main, __doc__)
