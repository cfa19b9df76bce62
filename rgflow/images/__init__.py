"""Flows on images: offline datasets, dequantisation and bits/dim, maximum-likelihood training, and
the scale-separation demos (feature mixing, temperature per level, receptive fields, coarse-to-fine
generation, inpainting) that also run on lattice flows."""
from rgflow.images.data import DATASETS, ImageSet, load
from rgflow.images.model import ImageFlow, bits_per_dim, dequantize, logit_transform
from rgflow.images.train import ImageConfig, build_image_model, train_images

__all__ = ["DATASETS", "ImageSet", "load", "ImageFlow", "bits_per_dim", "dequantize", "logit_transform",
           "ImageConfig", "build_image_model", "train_images"]
