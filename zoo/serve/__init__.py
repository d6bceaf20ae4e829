"""``python -m zoo serve``: a local search service and page over one collection (the ``[serve]`` extra).

- ``engine``: the collection opened once, models loaded once, queries batched as they arrive
- ``app``: ``create_app`` (FastAPI: ``/search``, ``/image/{row}``, ``/info``, the page at ``/``) and ``serve``
"""

from zoo.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
