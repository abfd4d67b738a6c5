"""lineguard trainer: good images in, a calibrated int8 model bundle out."""
import os

# TensorFlow's C++ start-up chatter hides the progress bars; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Names only, so the command line can check them without importing TensorFlow.
AUGMENTATIONS = ("flip", "shift", "brightness")
