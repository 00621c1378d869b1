"""Where features live between the audio and the model: the memory-mapped cache, LitData shards,
and the length-bucketed batches read from them."""
