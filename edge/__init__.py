"""lineguard's device package."""
import os

# The most pixels an image file may declare (edge.core.preprocess checks it from the header, before decoding,
# with a clear message). OpenCV's own decoder limit repeats it as a second guard; OpenCV reads that variable
# once, when cv2 is loaded, so it is set here, before any module of this package imports cv2.
MAX_IMAGE_PIXELS = 50_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
