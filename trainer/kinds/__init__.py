"""The trainer's side of each model kind, one module per kind named after its device folder: edge/kinds/<kind>/
is what the device runs, trainer/kinds/<kind>.py what the trainer fits and exports (it may import TensorFlow;
the device package never imports this one). trainer.models finds a kind's module by that name."""
