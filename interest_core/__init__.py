"""Shared core of the interest-migration stack: config, events, model, data, profiles,
migration and ranking. Imported by gateway/ and quantize/; imports nothing from Triton."""
