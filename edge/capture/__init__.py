"""Frame sources: ``registry`` lists the kinds (folder, video, camera, stream, gstreamer) and opens them; one module
per kind family (``folder``, ``video``, ``live``); ``template`` shows how to add a kind."""
