"""speechrnn: recurrent networks (RNN, GRU, LSTM) that classify speech and other sequences."""

from speechrnn.features import FeatureSettings
from speechrnn.models import RNNClassifier

__all__ = ["FeatureSettings", "RNNClassifier"]
__version__ = "0.1.0"
