"""The offline side: datasets and their adapters, the torch model, training, evaluation and
its reports. Imports the serving core, never the gateway or the tools."""
