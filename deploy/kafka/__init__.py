"""Package data: the local broker's Maven POM and log configuration (installed as
``shadowline.kafka_broker``)."""
