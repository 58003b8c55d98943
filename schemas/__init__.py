"""Package data: the Avro schemas of every topic (installed as ``shadowline.schemas``)."""
