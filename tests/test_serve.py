"""``speechrnn serve``: answers equal ``predict``'s and ``spot``'s, requests are batched, live streams
give ``spot``'s events as they happen, and every bad request gets its status and JSON error while the
server goes on serving. A real uvicorn server on 127.0.0.1 (a free port) in a thread of the test."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi", reason="the server stack is the serve extra: pip install -e '.[dev]'")
httpx = pytest.importorskip("httpx")
ws_client = pytest.importorskip("websockets.sync.client")

from speechrnn.features import FeatureSettings  # noqa: E402
from speechrnn.inference import Predictor, WaveformClassifier  # noqa: E402
from speechrnn.models.classifier import RNNClassifier  # noqa: E402
from speechrnn.serving.app import ServeLimits, create_app  # noqa: E402
from speechrnn.serving.live_events import LiveEvents  # noqa: E402
from speechrnn.serving.model import ServedModel  # noqa: E402
from speechrnn.serving.server import BackgroundServer  # noqa: E402
from speechrnn.spotting.events import detect_events  # noqa: E402
from speechrnn.spotting.track import PosteriorTrack  # noqa: E402
from tests.test_spot import save_checkpoint  # noqa: E402

RATE = 16000
CLASSES = ["tone", "noise", "_unknown_"]
LIMITS = ServeLimits(max_upload_bytes=2**20, max_seconds=20.0, max_streams=2)


# --- a tiny model that tells a tone from noise ----------------------------------------------------------
def tone(seconds: float, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * rng.uniform(300, 900) * t)
    return (wave + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def noise(seconds: float, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    return (rng.uniform(0.02, 0.3) * rng.standard_normal(int(seconds * rate))).astype(np.float32)


def tone_model() -> RNNClassifier:
    """A one-layer GRU trained for a few seconds to answer ``tone`` for a sine and ``noise`` for noise."""
    torch.manual_seed(0)
    settings = FeatureSettings(sample_rate=RATE, n_mfcc=8, n_mels=20, deltas=1, normalize="none")
    model = RNNClassifier(
        settings.feature_dim, 3, class_names=CLASSES, hidden_size=8, num_layers=1, input_norm=True, dropout=0.0
    )
    model.data_config = {"class_names": CLASSES, "features": settings.to_dict(), "clip_seconds": 1.0}
    classifier = WaveformClassifier.from_model(model)
    rng = np.random.default_rng(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    targets = torch.tensor([0] * 4 + [1] * 4)
    for _ in range(40):
        clips = [tone(rng.uniform(0.3, 1.0), rng) for _ in range(4)] + [
            noise(rng.uniform(0.3, 1.0), rng) for _ in range(4)
        ]
        lengths = torch.tensor([len(clip) for clip in clips])
        batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(clip) for clip in clips], batch_first=True)
        loss = torch.nn.functional.nll_loss(torch.log(classifier(batch, lengths) + 1e-9), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tone_model(), tmp_path_factory.mktemp("model") / "tone.ckpt")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tone at 44.1 kHz stereo, noise at 8 kHz (FLAC), and a recording of noise, tone, noise, tone."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(7)
    paths = {"tone": folder / "tone.wav", "noise": folder / "noise.flac", "recording": folder / "recording.wav"}
    sf.write(paths["tone"], np.stack([tone(1.0, rng, 44100)] * 2, axis=1), 44100)
    sf.write(paths["noise"], noise(1.0, rng, 8000), 8000)
    parts = [noise(2.0, rng, 8000), tone(1.5, rng, 8000), noise(2.5, rng, 8000), tone(1.2, rng, 8000)]
    sf.write(paths["recording"], np.concatenate(parts), 8000)
    return paths


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(ServedModel(checkpoint), LIMITS)) as running:
        yield running


def post(server: BackgroundServer, path: str, data: bytes, name: str = "clip.wav", **params: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", files={"file": (name, data)}, params=params, timeout=30)


def assert_still_serving(server: BackgroundServer, clips: dict[str, Path]) -> None:
    answer = post(server, "/predict", clips["tone"].read_bytes())
    assert answer.status_code == 200 and answer.json()["label"] == "tone"


def wav(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


# --- answers --------------------------------------------------------------------------------------------
def test_predict_answers_what_the_predict_command_answers(server, checkpoint, clips, capsys) -> None:
    from speechrnn.predict import main as predict

    for path in (clips["tone"], clips["noise"]):
        answer = post(server, "/predict", path.read_bytes(), path.name, top_k="0")
        assert answer.status_code == 200
        served = {row["label"]: row["probability"] for row in answer.json()["top"]}
        assert predict(["--ckpt", str(checkpoint), str(path), "--format", "jsonl", "--top_k", "3"]) == 0
        printed = json.loads(capsys.readouterr().out)
        expected = {row["label"]: row["probability"] for row in printed["top"]}
        assert list(served) == list(expected)  # same order, most likely first
        np.testing.assert_allclose(list(served.values()), list(expected.values()), rtol=0, atol=1e-6)
        alone = Predictor.from_checkpoint(checkpoint).predict_file(path)
        np.testing.assert_allclose([served[k] for k in alone], list(alone.values()), rtol=0, atol=1e-6)
    assert post(server, "/predict", clips["noise"].read_bytes(), "n.flac").json()["label"] == "noise"
    top = post(server, "/predict", clips["tone"].read_bytes(), top_k="1").json()["top"]
    assert [row["label"] for row in top] == ["tone"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, clips) -> None:
    batcher = server.server.config.app.state.batcher
    bodies = [clips["tone"].read_bytes(), clips["noise"].read_bytes()] * 12

    async def send_all() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            answers = await asyncio.gather(*(client.post("/predict", files={"file": ("c", b)}) for b in bodies))
        return [answer.json() for answer in answers]

    before_batches, before_items = batcher.batches, batcher.items
    answers = asyncio.run(send_all())
    assert [a["label"] for a in answers] == ["tone", "noise"] * 12
    batches, items = batcher.batches - before_batches, batcher.items - before_items
    assert items == 24 and batches < items  # several clips shared a forward pass


def test_spot_finds_what_the_spot_command_finds(server, checkpoint, clips, capsys) -> None:
    from speechrnn.spot import main as spot

    answer = post(server, "/spot", clips["recording"].read_bytes(), "recording.wav")
    assert answer.status_code == 200
    events = answer.json()["events"]
    assert spot(["--ckpt", str(checkpoint), str(clips["recording"]), "--format", "jsonl"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["label"] for e in events] == [e["label"] for e in expected] and "tone" in [e["label"] for e in events]
    for got, want in zip(events, expected, strict=True):
        assert got["start"] == pytest.approx(want["start"], abs=1e-3) and got["end"] == pytest.approx(
            want["end"], abs=1e-3
        )
        assert got["score"] == pytest.approx(want["score"], abs=1e-3)


def test_health_metadata_and_page(server) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    metadata = httpx.get(f"{server.url}/metadata").json()
    assert metadata["class_names"] == CLASSES and metadata["sample_rate"] == RATE
    assert metadata["features"]["n_mfcc"] == 8 and metadata["parameters"] > 0 and metadata["size_bytes"] > 0
    assert metadata["spotting"]["thresholds"] == {"tone": 0.5, "noise": 0.5}
    assert metadata["limits"]["max_upload_bytes"] == LIMITS.max_upload_bytes
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<script>" in page.text and 'id="upload"' in page.text


# --- bad requests -----------------------------------------------------------------------------------------
def lying_header(samples: int = 16000) -> bytes:
    """A 16-bit wav of ``samples`` samples whose header says 1 Hz."""
    data = bytearray(wav(np.full(samples, 0.1, np.float32)))
    data[24:28] = (1).to_bytes(4, "little")
    data[28:32] = (2).to_bytes(4, "little")
    return bytes(data)


BAD_UPLOADS = {
    "not audio": (b"this is not audio at all" * 10, 415, "cannot read audio (unknown format or corrupt file)"),
    "empty": (b"", 400, "empty upload (no bytes)"),
    "truncated": (wav(np.full(RATE, 0.1, np.float32))[:5000], 400, "truncated file"),
    "too long": (wav(np.full(25 * 1000, 0.1, np.float32), 1000), 413, "too long (25.0 s, the limit is 20.0 s"),
    "too large": (wav(np.full(RATE * 40, 0.1, np.float32)), 413, "over the limit of 1048576 bytes"),
    "lying header": (lying_header(), 422, "sample rate 1 Hz is outside 1000-768000 Hz"),
    "silent": (wav(np.zeros(RATE, np.float32)), 422, "silent"),
    "too short": (wav(np.full(100, 0.1, np.float32)), 422, "too short"),
}


@pytest.mark.parametrize("path", ["/predict", "/spot"])
@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_gets_its_status_and_json_error_and_the_server_goes_on(server, clips, case, path) -> None:
    data, status, message = BAD_UPLOADS[case]
    answer = post(server, path, data, "bad.wav")
    assert answer.status_code == status
    body = answer.json()
    assert body["status"] == status and message in body["error"]
    if case not in ("empty", "too large"):
        assert body["error"].startswith("bad.wav: ")
    assert_still_serving(server, clips)


def test_malformed_requests_are_named(server, clips) -> None:
    answer = httpx.post(f"{server.url}/predict", content=b"", timeout=10)
    assert answer.status_code == 400 and "empty request" in answer.json()["error"]
    answer = httpx.post(f"{server.url}/predict", data={"other": "x"}, files={"a": b"1", "b": b"2"}, timeout=10)
    assert answer.status_code == 400 and "no audio file in the form" in answer.json()["error"]
    answer = post(server, "/predict", clips["tone"].read_bytes(), top_k="three")
    assert answer.status_code == 400 and answer.json()["error"] == "top_k must be an integer, got 'three'"
    raw = httpx.post(f"{server.url}/predict?name=raw.wav", content=clips["tone"].read_bytes(), timeout=10)
    assert raw.json()["file"] == "raw.wav" and raw.json()["label"] == "tone"  # a raw body is the file too
    assert httpx.get(f"{server.url}/nowhere").json() == {"error": "Not Found", "status": 404}
    assert_still_serving(server, clips)


def test_a_client_that_disconnects_mid_upload_leaves_the_server_serving(server, clips) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: 500000\r\n\r\n"
            + clips["tone"].read_bytes()[:1000]
        )
    assert_still_serving(server, clips)


def test_uploads_are_never_written_to_disk(server, clips, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the server wrote a temporary file")

    for name in ("mkstemp", "TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    big = wav(np.stack([tone(5.0, np.random.default_rng(3), 44100)] * 2, axis=1), 44100)  # 1.8 MB > 1 MB spool
    server_limits = server.server.config.app.state.limits
    assert len(big) < server_limits.max_upload_bytes * 2
    answer = httpx.post(f"{server.url}/predict", content=big[: server_limits.max_upload_bytes - 1], timeout=30)
    assert answer.status_code in (200, 400)  # cut to fit the limit: refused as truncated or read, never spooled
    assert_still_serving(server, clips)


# --- live streams -----------------------------------------------------------------------------------------
def stream_url(server: BackgroundServer, **params: object) -> str:
    return f"ws://127.0.0.1:{server.port}/stream?" + "&".join(f"{k}={v}" for k, v in params.items())


def test_a_stream_gives_the_events_spot_finds_as_they_happen(server, checkpoint, clips, capsys) -> None:
    from speechrnn.spot import main as spot

    samples, rate = sf.read(clips["recording"], dtype="int16")
    messages = []
    with ws_client.connect(stream_url(server, rate=rate, format="s16")) as stream:
        ready = json.loads(stream.recv())
        assert ready["type"] == "ready" and ready["classes"] == CLASSES
        for start in range(0, len(samples), 1234):
            stream.send(samples[start : start + 1234].tobytes())
            while True:  # what this chunk brought (labels of each new window, events once final)
                try:
                    messages.append(json.loads(stream.recv(timeout=0.05)))
                except TimeoutError:
                    break
        stream.send("end")
        while (message := json.loads(stream.recv(timeout=30)))["type"] != "end":
            messages.append(message)
    assert message["seconds"] == pytest.approx(len(samples) / rate)
    labels = [m for m in messages if m["type"] == "labels"]
    assert labels and {m["top"][0]["label"] for m in labels} == {"tone", "noise"}
    events = [m for m in messages if m["type"] == "event"]
    assert spot(["--ckpt", str(checkpoint), str(clips["recording"]), "--format", "jsonl"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    key = lambda e: (round(e["start"], 2), e["label"])  # noqa: E731
    assert sorted(map(key, events)) == sorted(map(key, expected))
    first_tone = next(e for e in events if e["label"] == "tone")
    sent_before = messages.index(first_tone)
    assert any(m["type"] == "labels" and m["time"] > first_tone["end"] for m in messages[sent_before:])  # live


def test_too_many_streams_get_503_and_a_closed_one_frees_its_place(server, clips) -> None:
    with ws_client.connect(stream_url(server, rate=RATE)), ws_client.connect(stream_url(server, rate=RATE)):
        with pytest.raises(ws_client.InvalidStatus) as refused:
            ws_client.connect(stream_url(server, rate=RATE))
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body) == {
            "error": "too many open streams (the limit is 2); try again later",
            "status": 503,
        }
    wait_for_streams(server, 0)
    with ws_client.connect(stream_url(server, rate=RATE)) as again:
        assert json.loads(again.recv())["type"] == "ready"
    assert_still_serving(server, clips)


def wait_for_streams(server: BackgroundServer, count: int) -> None:
    for _ in range(200):
        if httpx.get(f"{server.url}/health").json()["open_streams"] == count:
            return
        asyncio.run(asyncio.sleep(0.02))
    raise AssertionError(f"open streams did not go back to {count}")


def test_a_client_that_vanishes_mid_stream_frees_its_stream(server, clips) -> None:
    with ws_client.connect(stream_url(server, rate=RATE, format="f32")) as stream:
        stream.recv()
        stream.send(noise(0.5, np.random.default_rng(1)).tobytes())
        stream.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame
        stream.socket.close()
    wait_for_streams(server, 0)
    assert_still_serving(server, clips)


@pytest.mark.parametrize(
    "params,chunk,message",
    [
        ({"rate": 1}, None, "sample rate 1 Hz is outside 1000-768000 Hz"),
        ({"rate": "fast"}, None, "invalid literal for int()"),
        ({"rate": RATE, "format": "mp3"}, None, "format must be f32 or s16, got 'mp3'"),
        ({"rate": RATE, "format": "s16"}, b"\x00\x01\x02", "a chunk of 3 bytes is not whole s16 samples"),
        ({"rate": RATE}, np.array([np.nan] * 400, "<f4").tobytes(), "the chunk holds NaN or infinite samples"),
        ({"rate": RATE}, b"\x00" * (2**20 + 4), "over the limit of 1048576"),
    ],
)
def test_a_bad_stream_is_refused_with_a_reason(server, clips, params, chunk, message) -> None:
    if chunk is None:
        with pytest.raises(ws_client.InvalidStatus) as refused:
            ws_client.connect(stream_url(server, **params))
        assert refused.value.response.status_code == 400
        assert message in json.loads(refused.value.response.body)["error"]
    else:
        with ws_client.connect(stream_url(server, **params), max_size=None) as stream:
            stream.recv()
            stream.send(chunk)
            error = json.loads(stream.recv(timeout=10))
            assert error["type"] == "error" and message in error["error"]
    wait_for_streams(server, 0)
    assert_still_serving(server, clips)


def test_live_events_equal_detect_events_on_the_whole_track() -> None:
    rng = np.random.default_rng(11)
    for trial in range(20):
        rows = int(rng.integers(5, 300))
        raw = rng.random((rows, 3)) ** 3
        raw[:, 0] += np.repeat(rng.random(rows // 10 + 1) > 0.6, 10)[:rows] * 2
        probabilities = (raw / raw.sum(1, keepdims=True)).astype(np.float32)
        times = 1.0 + 0.1 * np.arange(rows)
        track = PosteriorTrack(times, probabilities, ["yes", "no", "_unknown_"], 1.0, 0.1, duration_s=float(times[-1]))
        smoothing, refractory = [0.0, 0.3, 0.5][trial % 3], [0.0, 0.5, 1.0][trial % 3]
        thresholds = {"yes": 0.5, "no": float(rng.uniform(0.2, 0.5))}
        expected = detect_events(track, thresholds, smoothing_s=smoothing, refractory_s=refractory)
        live = LiveEvents(
            track.class_names, thresholds, hop_s=0.1, window_s=1.0, smoothing_s=smoothing, refractory_s=refractory
        )
        found, start = [], 0
        while start < rows:
            stop = start + int(rng.integers(1, 12))
            found += live.push(times[start:stop], probabilities[start:stop])
            start = stop
        found += live.finish()
        assert sorted(found, key=lambda e: (e.start, e.label, e.end)) == expected
        assert len(live.times) <= 3  # only the rows the smoothing still needs


# --- the command and the load benchmark -------------------------------------------------------------------
def speechrnn_command(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from speechrnn.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_serve_is_a_speechrnn_command_with_one_line_errors(tmp_path: Path, capsys) -> None:
    status, out, _ = speechrnn_command(["serve", "--help"], capsys)
    assert status == 0 and "--max_upload_mb" in out and "--ckpt" in out
    status, _, err = speechrnn_command(["serve", "--ckpt", str(tmp_path / "none.ckpt")], capsys)
    assert status == 2 and err.count("\n") == 1 and "none.ckpt" in err
    status, _, err = speechrnn_command(["serve", "--ckpt", "x.ckpt", "--max_streams", "0"], capsys)
    assert status == 2 and err.strip() == "error: --max_streams must be >= 1, got 0"


@pytest.mark.slow
def test_the_load_benchmark_runs_short_without_errors(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    command = [
        sys.executable, "serve_load.py", "--ckpt", str(checkpoint), "--requests", "150", "--clients", "[1, 8, 32]",
        "--streams", "[1, 2]", "--stream_chunks", "20", "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command, cwd=Path(__file__).resolve().parents[1] / "benchmarks", check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert [level["clients"] for level in result["predict"]] == [1, 8, 32]
    for level in result["predict"]:
        assert level["errors"] == 0 and level["ok"] == 150
        assert level["p50_ms"] > 0 and level["p99_ms"] >= level["p95_ms"] >= level["p50_ms"]
        assert level["requests_per_s"] > 0 and level["rss_mib"]["after"] > 0
    for level in result["stream"]:
        assert level["errors"] == 0 and level["chunks"] > 0 and level["p50_ms"] > 0


def test_a_model_normalised_per_speaker_streams_with_the_training_voices_pooled(tmp_path: Path) -> None:
    """A live stream's own statistics are unknown when it starts: without --speaker it is normalised
    with the training voices' statistics pooled (each voice alike), and it streams; uploads keep
    their own statistics, as predict gives them."""
    model = tone_model()
    features = FeatureSettings.from_dict(model.data_config["features"])
    dim = features.feature_dim
    voices = {"a": {"mean": [1.0] * dim, "std": [1.0] * dim}, "b": {"mean": [3.0] * dim, "std": [2.0] * dim}}
    model.data_config = {
        **model.data_config,
        "features": {**model.data_config["features"], "normalize": "speaker"},
        "speaker_statistics": voices,
    }
    served = ServedModel(save_checkpoint(model, tmp_path / "speaker.ckpt"))
    mean, std = served.live_speaker
    assert torch.allclose(mean, torch.full((dim,), 2.0)) and torch.allclose(
        std, torch.full((dim,), 3.5**0.5)
    )  # (1 + 1 + 4 + 9) / 2 - 2**2
    upload = io.BytesIO()
    sf.write(upload, tone(0.8, np.random.default_rng(3)), RATE, format="WAV")
    from speechrnn.audio_io import AudioBytes

    own, _ = served.predictor.speaker_statistics([AudioBytes(upload.getvalue())])
    assert torch.allclose(served.clip_statistics(AudioBytes(upload.getvalue()))[0], own[0])
    with BackgroundServer(create_app(served, LIMITS)) as running:
        with ws_client.connect(stream_url(running, rate=RATE, format="f32")) as stream:
            assert json.loads(stream.recv())["type"] == "ready"
            stream.send(tone(1.5, np.random.default_rng(4)).tobytes())
            stream.send("end")
            kinds = set()
            while (message := json.loads(stream.recv(timeout=30)))["type"] != "end":
                kinds.add(message["type"])
    assert "labels" in kinds
