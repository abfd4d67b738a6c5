"""A Sparkplug B 3.0 edge node: the station as a node with one device (the camera), its verdicts as DDATA.

``payloads`` builds every message on the Eclipse Tahu protobuf schema, ``link`` is the node's own broker connection
(its will is the NDEATH), ``sender`` sends births and then the outbox's held DDATA rows in one seq order, and
``node`` is the output that ties them to the station (edge.publish.outputs).

``sparkplug_b.proto`` is Eclipse Tahu's schema as published (EPL-2.0, header kept); ``sparkplug_b_pb2.py`` is
generated from it by protoc 31.1 (the protobuf 6.31.1 generation, which protobuf 6.31.1 and later runtimes load)
and committed, so nothing is compiled or fetched at run time. From the repository root:

    protoc --proto_path=. --python_out=. edge/publish/sparkplug/sparkplug_b.proto
"""
