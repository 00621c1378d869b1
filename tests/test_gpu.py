"""The GPU path computes what the CPU path computes: the same outputs and gradients in float32
(cuDNN, padded exact and packed), close ones under bf16/fp16 autocast, the same on-device MFCC and
augmented training batches, and a full fit with on-device features. Skipped without a CUDA GPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from speechrnn.audio_io import read_audio
from speechrnn.data import AudioFolderDataModule
from speechrnn.data.augment import AugmentSettings
from speechrnn.features import FeatureSettings
from speechrnn.fit import main
from speechrnn.inference import Predictor
from speechrnn.models import SequenceClassifierNet
from tests.models.test_padding import padded_batch
from tests.test_cli import fit_args

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


@pytest.fixture
def strict_float32() -> Iterator[None]:
    """TF32 off (cuDNN allows it by default), so float32 on the GPU is float32 arithmetic."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def net_and_batch(cell: str, packed: bool) -> tuple[SequenceClassifierNet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = SequenceClassifierNet(6, 4, cell, 16, 2, bidirectional=True, dropout=0.0, packed=packed)
    x, lengths = padded_batch(garbage=123.0)
    return net, x, lengths


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_cuda_float32_outputs_and_gradients_match_the_cpu(strict_float32, cell: str, packed: bool) -> None:
    net, x, lengths = net_and_batch(cell, packed)
    net.train()  # cuDNN computes RNN gradients in training mode only; no dropout here
    cpu = net(x, lengths)
    cpu.square().sum().backward()
    cpu_grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()
    net.to(CUDA)
    gpu = net(x.to(CUDA), lengths.to(CUDA))
    gpu.square().sum().backward()
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad.cpu(), cpu_grads[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_full_length_batches_take_the_whole_stack_kernel_with_the_same_results(
    strict_float32, cell: str, bidirectional: bool
) -> None:
    torch.manual_seed(0)
    net = SequenceClassifierNet(6, 4, cell, hidden_size=16, num_layers=2, bidirectional=bidirectional, dropout=0.0)
    net.train().to(CUDA)
    x, lengths = torch.randn(5, 9, 6, device=CUDA), torch.full((5,), 9)
    results = []
    for stack in (True, False):
        net.encoder.fused = "auto" if stack else "off"
        net.zero_grad()
        out = net(x, lengths)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    (stacked, stacked_grads), (per_direction, grads) = results
    torch.testing.assert_close(stacked, per_direction, rtol=1e-5, atol=1e-6)
    for got, want in zip(stacked_grads, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("packed", [False, True])
def test_autocast_on_cuda_stays_close_to_float32(strict_float32, dtype: torch.dtype, packed: bool) -> None:
    net, x, lengths = net_and_batch("gru", packed)
    net = net.eval().to(CUDA)
    x, lengths = x.to(CUDA), lengths.to(CUDA)
    with torch.no_grad():
        reference = net(x, lengths)
        with torch.autocast("cuda", dtype=dtype):
            mixed = net(x, lengths)
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.float(), reference, rtol=0.05, atol=0.05)


def waveform_module(corpus: Path, cache: Path, augment: AugmentSettings) -> AudioFolderDataModule:
    module = AudioFolderDataModule(
        manifest=corpus,
        cache_dir=cache,
        features=FeatureSettings(deltas=2, normalize="dataset"),
        on_device_features=True,
        augment=augment,
        batch_size=5,
    )
    module.setup("fit")
    return module


def to_cuda(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(part.to(CUDA) for part in batch)


@pytest.mark.parametrize("training", [False, True])
def test_on_device_features_and_augmentation_on_cuda_equal_the_cpu(
    strict_float32, tiny_corpus: Path, tmp_path: Path, training: bool
) -> None:
    # Every random draw of these augmentations comes from the augmenter's seeded CPU generator, so
    # two modules with the same seed must give the same training batch on either device.
    augment = AugmentSettings(
        time_shift_ms=50, speed_factors=(0.9, 1.0, 1.1), vtln_warp=0.1, coloured_noise=True, noise_probability=1.0
    )
    on_cpu = waveform_module(tiny_corpus, tmp_path / "cache", augment)
    on_gpu = waveform_module(tiny_corpus, tmp_path / "cache", augment)
    loader = on_cpu.dataloader("train", shuffle=False)
    for batch in loader:
        expected, expected_lengths, *expected_rest = on_cpu.featurize(batch, training=training)
        features, lengths, *rest = on_gpu.featurize(to_cuda(batch), training=training)
        assert features.is_cuda
        torch.testing.assert_close(lengths.cpu(), expected_lengths)
        torch.testing.assert_close(features.cpu(), expected, rtol=1e-3, atol=2e-3)
        for part, expected_part in zip(rest, expected_rest, strict=True):
            assert torch.equal(part.cpu(), expected_part)


def test_cached_features_with_spec_augment_and_shift_on_cuda(tiny_corpus: Path, tmp_path: Path) -> None:
    augment = AugmentSettings(time_shift_ms=50, freq_masks=2, freq_mask_width=4, time_masks=2, time_mask_width=5)
    module = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=tmp_path / "cache", augment=augment, batch_size=5)
    module.setup("fit")
    for batch in module.dataloader("train", shuffle=False):
        features, lengths, labels, _ = module.featurize(to_cuda(batch), training=True)
        assert features.is_cuda and features.shape[0] == len(lengths) == len(labels)
        padding = torch.arange(features.shape[1])[None, :] >= lengths.cpu()[:, None]
        assert not features.cpu()[padding].any(), "padding frames must stay zero"


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_fit_with_on_device_features_and_augmentation_on_gpu(tiny_corpus: Path, tmp_path: Path, precision: str) -> None:
    extra = (
        "--trainer.max_epochs", "2", "--trainer.accelerator", "gpu", "--trainer.precision", precision,
        "--data.on_device_features", "true", "--data.features.deltas", "2",
        "--data.augment.speed_factors", "[0.9, 1.0, 1.1]", "--data.augment.vtln_warp", "0.1",
        "--data.augment.coloured_noise", "true", "--data.augment.time_shift_ms", "50",
        "--data.augment.freq_masks", "2", "--data.augment.time_masks", "2",
    )  # fmt: skip
    metrics = main(fit_args(tiny_corpus, tmp_path, *extra))
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    on_cpu = Predictor.from_checkpoint(checkpoint)
    on_gpu = Predictor.from_checkpoint(checkpoint, device="cuda")
    rate = on_cpu.settings.rate
    waveform = read_audio(next(tiny_corpus.parent.rglob("*.wav")), rate).numpy()
    expected = on_cpu.probabilities(waveform, rate)
    torch.testing.assert_close(on_gpu.probabilities(waveform, rate), expected, atol=2e-3, rtol=0)
