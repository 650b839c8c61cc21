"""Data modules: MNIST and Frey Face (see ``aevb.data.sources`` for download and mirrors), and your own
images from a folder or an array file (``aevb.data.own``)."""

from aevb.data.frey_face import FreyFaceDataModule
from aevb.data.mnist import MNISTDataModule
from aevb.data.own import ArrayDataModule, ImageFolderDataModule

__all__ = ["ArrayDataModule", "FreyFaceDataModule", "ImageFolderDataModule", "MNISTDataModule"]
