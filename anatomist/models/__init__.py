"""Model loading, chat templating with response masks, layer access and a fingerprint of the weights."""

from anatomist.models.chat import Encoded, apply_chat_template, encode_response
from anatomist.models.fingerprint import model_fingerprint
from anatomist.models.layers import decoder_layers, num_layers
from anatomist.models.loading import DEFAULT_MODEL, LoadedModel, load, load_tokenizer, resolve

__all__ = ["DEFAULT_MODEL", "Encoded", "LoadedModel", "apply_chat_template", "decoder_layers",
           "encode_response", "load", "load_tokenizer", "model_fingerprint", "num_layers", "resolve"]
