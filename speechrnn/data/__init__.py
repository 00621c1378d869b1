"""Lightning DataModules: audio folders and manifests, the embedded synthetic corpus, and friends."""

from speechrnn.data.audio_base import AudioDataModule
from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.data.corpora.folder import AudioFolderDataModule
from speechrnn.data.corpora.from_shards import ShardedDataModule
from speechrnn.data.corpora.fsdd import FSDDDataModule
from speechrnn.data.corpora.sequences import SequenceDataModule
from speechrnn.data.corpora.speech_commands import SpeechCommandsDataModule
from speechrnn.data.corpora.synthetic.datamodule import SyntheticCommandsDataModule
from speechrnn.data.corpora.text import CharTextDataModule
from speechrnn.data.records import Record
from speechrnn.data.storage.bucketing import BucketBatchSampler
from speechrnn.data.storage.feature_cache import FeatureStore, MemmapFeatureCache

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
