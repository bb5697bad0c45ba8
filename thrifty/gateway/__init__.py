"""The HTTP app: each endpoint reads, authenticates and parses its wire format once, runs the
pipeline (:mod:`thrifty.pipeline`) and renders the answer in that format.

Modules: ``app`` (chat completions, Messages, embeddings, models, ``/metrics``),
``responses_api`` (the Responses API's wire format), ``batch_api`` / ``batch_exec`` (``/v1/files``,
``/v1/batches`` and running their lines), ``errors`` (one error rendered per wire format),
``assemble`` (the app ``serve``, ``demo`` and the tests run), ``server`` / ``workers``
(``thrifty serve``), ``demo`` (``thrifty demo``).
"""
