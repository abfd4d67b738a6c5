"""Frame sources: one module per kind of camera, file or stream."""
