"""Video media: PyAV decoding of in-memory video bytes into the frames the judge sees (probe, frame passes, reference-frame skipping)."""
