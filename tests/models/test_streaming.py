"""Chunk-by-chunk inference ends exactly where offline inference does."""

from __future__ import annotations

import pytest
import torch

from speechrnn.models import SequenceClassifierNet
from speechrnn.models.pooling import POOLINGS
from speechrnn.models.streaming import StreamingClassifier


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_streaming_equals_offline(cell: str, pooling: str) -> None:
    torch.manual_seed(0)
    net = SequenceClassifierNet(
        5, 3, cell, hidden_size=8, num_layers=2, bidirectional=False, pooling=pooling, input_norm=True
    )
    x = torch.randn(2, 23, 5, generator=torch.Generator().manual_seed(1))
    offline = net.eval()(x, torch.tensor([23, 23]))
    stream = StreamingClassifier(net)
    for start, stop in [(0, 1), (1, 8), (8, 8), (8, 17), (17, 23)]:
        partial = stream.push(x[:, start:stop])
        if stop == 8:
            expected = net(x[:, :8], torch.tensor([8, 8]))
            torch.testing.assert_close(partial, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stream.output(), offline, rtol=1e-5, atol=1e-5)
    stream.reset()
    torch.testing.assert_close(stream.push(x), offline, rtol=1e-5, atol=1e-5)


def test_bidirectional_models_refuse_to_stream() -> None:
    with pytest.raises(ValueError, match="bidirectional models cannot stream"):
        StreamingClassifier(SequenceClassifierNet(5, 3, bidirectional=True))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_per_step_network_streams_each_chunks_frames_with_the_state_carried(cell: str) -> None:
    torch.manual_seed(0)
    net = SequenceClassifierNet(4, 2, cell, hidden_size=6, num_layers=2, bidirectional=False, per_step=True).eval()
    x = torch.randn(3, 30, 4, generator=torch.Generator().manual_seed(2))
    offline = net(x, torch.full((3,), 30))
    stream = StreamingClassifier(net)
    chunks = [stream.push(x[:, start:stop]) for start, stop in [(0, 1), (1, 11), (11, 11), (11, 30)]]
    assert [c.shape[1] for c in chunks] == [1, 10, 0, 19]
    torch.testing.assert_close(torch.cat(chunks, 1), offline, rtol=1e-5, atol=1e-5)
    stream.reset()
    fresh = stream.push(x[:, 11:30])
    assert not torch.allclose(fresh, offline[:, 11:30], atol=1e-3)  # without the carried state the outputs differ
    with pytest.raises(RuntimeError, match="per-step network has no whole-sequence output"):
        stream.output()
