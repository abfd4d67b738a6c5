"""Frame sources: one module per kind (``folder``, ``video``, ``camera``, ``stream``, ``gstreamer``), each with its
own settings class, registered in ``kinds``; ``registry`` imports the built-in kinds and opens the configured one;
``live`` and ``replay`` hold what the kinds share; ``template`` shows how to add a kind."""
