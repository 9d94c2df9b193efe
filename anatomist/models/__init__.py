"""Model loading, chat templating with response masks, and layer access."""

from anatomist.models.chat import Encoded, apply_chat_template, encode_response
from anatomist.models.layers import decoder_layers, num_layers
from anatomist.models.loading import DEFAULT_MODEL, LoadedModel, load, load_tokenizer, resolve

__all__ = ["DEFAULT_MODEL", "Encoded", "LoadedModel", "apply_chat_template", "decoder_layers",
           "encode_response", "load", "load_tokenizer", "num_layers", "resolve"]
