"""Package data: the warehouse DDL and named queries (installed as ``shadowline.clickhouse``)."""
