"""Collections: embed many images into a sharded, resumable folder (one process or torchrun), read it back, search it.

- ``inputs``: files, folders, globs and ``@list.txt`` to a stable list of image paths
- ``store``: the output folder's files, written atomically
- ``embed``: ``embed_collection`` (DataLoader workers, shards, resume, torch.distributed)
- ``read``: ``read_embeddings`` (memory-mapped)
- ``media``: videos (rows pooled from sampled frames, ``read_row_info``) and GPU decoding of JPEGs
- ``search``: exact cosine top-k in bounded memory, by vector, text or image
"""

from zoo.collection.embed import EmbedResult, embed_collection
from zoo.collection.inputs import expand_inputs
from zoo.collection.media import read_row_info
from zoo.collection.read import MappedRows, read_embeddings, read_manifest
from zoo.collection.search import Hit, search, top_k
from zoo.collection.store import CollectionError

__all__ = [
    "CollectionError", "EmbedResult", "Hit", "MappedRows", "embed_collection", "expand_inputs", "read_embeddings",
    "read_manifest", "read_row_info", "search", "top_k",
]
