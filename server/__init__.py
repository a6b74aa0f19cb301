"""fedrec coordinator: ServerApp, strategy (validation, aggregation, early stopping), checkpoints."""
