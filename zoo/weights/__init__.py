"""The weights pipeline: Meta's checkpoints in, verified zoo safetensors out, found again on every load.

- ``source``: fetch (``hub``) and open Meta's checkpoints, memory-mapped, no code executed
- ``convert`` / ``convert_text``: the strict key mapping and streaming conversion of the vision and text towers
- ``writer``: the atomic, streaming safetensors writer
- ``integrity``: sha256 records and metadata checks
- ``resolver``: where an entry's weights come from, in order, verified before use
- ``birder_file``: checkpoints birder's scripts wrote for zoo networks, read in the zoo's terms
"""

from zoo.weights.birder_file import BirderCheckpoint, is_birder_checkpoint, read_birder_checkpoint
from zoo.weights.convert import (
    CONVERTER_VERSION, ConvertResult, convert_checkpoint, file_metadata, guess_entry, map_vision_key, meta_to_zoo,
    output_path, plan_conversion, split_vision,
)
from zoo.weights.convert_text import convert_text_checkpoint, meta_text_to_zoo, text_weights_file
from zoo.weights.errors import ConversionError, OutputError, WeightsIntegrityError, WeightsNotFoundError, first_line
from zoo.weights.finetuned import is_finetuned_path, read_finetuned, write_finetuned
from zoo.weights.integrity import check, check_metadata, file_sha256, read_metadata, record, sidecar_path, verify
from zoo.weights.resolver import Location, converter_command, locate, read_tensors, resolve
from zoo.weights.source import download_source, load_source, unwrap_state_dict
from zoo.weights.writer import TensorSpec, exit_on_sigterm, remove_stale_partials, write_safetensors

__all__ = [
    "BirderCheckpoint", "is_birder_checkpoint", "read_birder_checkpoint",
    "CONVERTER_VERSION", "ConversionError", "ConvertResult", "Location", "OutputError", "TensorSpec", "WeightsIntegrityError",
    "WeightsNotFoundError", "check", "exit_on_sigterm", "first_line", "remove_stale_partials", "check_metadata", "convert_checkpoint", "convert_text_checkpoint", "converter_command",
    "download_source", "file_metadata", "file_sha256", "guess_entry", "is_finetuned_path", "read_finetuned", "write_finetuned", "load_source", "locate", "map_vision_key",
    "meta_text_to_zoo", "meta_to_zoo", "output_path", "plan_conversion", "read_metadata", "read_tensors", "record",
    "resolve", "sidecar_path", "split_vision", "text_weights_file", "unwrap_state_dict", "verify", "write_safetensors",
]
