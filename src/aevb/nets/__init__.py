"""Encoder/decoder backbones behind one interface (see ``aevb.nets.base``)."""

from aevb.nets.base import Decoder, Encoder, count_parameters, init_normal_

__all__ = ["Decoder", "Encoder", "count_parameters", "init_normal_"]
