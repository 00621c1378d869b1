"""``speechrnn serve``: a checkpoint behind HTTP and WebSocket endpoints, and a live page.

- :mod:`~speechrnn.serving.model`: the checkpoint, loaded once, and what the endpoints ask of it
  (batched clip probabilities through :mod:`speechrnn.inference`, keyword events through
  :mod:`speechrnn.spotting` with ``speechrnn spot``'s thresholds).
- :mod:`~speechrnn.serving.batching`: concurrent requests gathered into one forward pass.
- :mod:`~speechrnn.serving.uploads`: request bodies read in memory under a size limit, and the HTTP
  status and JSON error of every bad request.
- :mod:`~speechrnn.serving.live_events`: keyword events from a posterior track that grows, the same
  events ``detect_events`` finds on the whole track, each sent as soon as it is final.
- :mod:`~speechrnn.serving.stream_state`: one WebSocket's audio, resampler, scorer and events.
- :mod:`~speechrnn.serving.app`: the FastAPI application; :mod:`~speechrnn.serving.server`: uvicorn.
- ``page/index.html``: the live page (microphone and upload), plain JavaScript.

The server stack (FastAPI, uvicorn) is the ``serve`` extra: ``pip install 'speechrnn[serve]'``.
"""
