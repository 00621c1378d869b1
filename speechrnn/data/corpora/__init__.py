"""The corpora speechrnn reads: audio folders and manifests, FSDD, Speech Commands, the embedded
synthetic corpus, feature sequences, text, LitData shards and a user's own recordings."""
