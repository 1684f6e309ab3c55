"""The stages of a run, in data order: read (shards -> rows), decode (bytes -> frames), score (frames -> judge outputs), sink (rows -> committed Parquet)."""
