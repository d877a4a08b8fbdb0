"""Ray Tune sample for machines with MNIST on disk and (optionally) GPUs: see cnn.py."""
