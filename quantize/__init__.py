"""Model export and quantization CLIs: export -> quantize -> (build on GPU) -> validate -> install."""
