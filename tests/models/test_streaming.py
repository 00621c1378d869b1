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
