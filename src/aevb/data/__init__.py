"""Data modules for MNIST and Frey Face (see ``aevb.data.sources`` for download and mirrors)."""

from aevb.data.frey_face import FreyFaceDataModule
from aevb.data.mnist import MNISTDataModule

__all__ = ["FreyFaceDataModule", "MNISTDataModule"]
