"""Development-only pieces: the offline tiny Qwen2.5-VL, the embedded loopback S3 server and the demo."""
