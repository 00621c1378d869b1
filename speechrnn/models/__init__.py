"""Recurrent networks (plain ``nn.Module``) and the LightningModule that trains them."""

from speechrnn.models.classifier import RNNClassifier
from speechrnn.models.encoder import RecurrentEncoder, reverse_within_length
from speechrnn.models.network import SequenceClassifierNet
from speechrnn.models.pooling import SequencePooling

__all__ = ["RNNClassifier", "RecurrentEncoder", "SequenceClassifierNet", "SequencePooling", "reverse_within_length"]
