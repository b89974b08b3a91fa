"""The serving core: config, errors, events, privacy, tokenizer, profiles and their store,
migration, ranking, and the model contract. Imported by the gateway, the offline side and the
tools; imports none of them, nor torch, ONNX Runtime or matplotlib."""
