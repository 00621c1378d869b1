"""The embedded corpus "synthetic-commands": its generator and its DataModule."""

from speechrnn.data.corpora.synthetic.datamodule import SyntheticCommandsDataModule

__all__ = ["SyntheticCommandsDataModule"]
