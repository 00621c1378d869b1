"""Lightning DataModules: audio folders and manifests, the embedded synthetic corpus, and friends."""

from speechrnn.data.audio import AudioDataModule
from speechrnn.data.base import Record, SequenceDataModuleBase
from speechrnn.data.cache import FeatureStore, MemmapFeatureCache
from speechrnn.data.folder import AudioFolderDataModule
from speechrnn.data.fsdd import FSDDDataModule
from speechrnn.data.sampler import BucketBatchSampler
from speechrnn.data.sequences import SequenceDataModule
from speechrnn.data.sharded import ShardedDataModule
from speechrnn.data.speech_commands import SpeechCommandsDataModule
from speechrnn.data.synthetic import SyntheticCommandsDataModule
from speechrnn.data.text import CharTextDataModule

__all__ = [
    "AudioDataModule",
    "AudioFolderDataModule",
    "BucketBatchSampler",
    "CharTextDataModule",
    "FSDDDataModule",
    "FeatureStore",
    "MemmapFeatureCache",
    "Record",
    "SequenceDataModule",
    "SequenceDataModuleBase",
    "ShardedDataModule",
    "SpeechCommandsDataModule",
    "SyntheticCommandsDataModule",
]
