"""vscore: distributed batch scoring of AI-generated video with VideoScore2.

Stages (one module each): shards (pack/list/read WebDataset tars) -> decode (PyAV, qwen-vl-utils frame
rule) -> score (prompt + engine + parse + soft scores) -> sink (partitioned Parquet). `job` wires them
on Ray Data; `config` is the typed run configuration; `schema` fixes the output columns.
"""

__version__ = "0.1.0"
