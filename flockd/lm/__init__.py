"""Language models in federated learning: LoRA adapters, exact aggregation, bits per character."""
