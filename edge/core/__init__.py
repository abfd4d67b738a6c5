"""What the device and the trainer share: decoding, preprocessing, the model runtime, scoring and the bundle."""
