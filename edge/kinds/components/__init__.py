"""Pieces more than one model kind can use: the backbone feature extractor (device), Keras fitting (trainer)."""
