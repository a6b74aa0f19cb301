"""fedrec client node: ClientApp, local trainer, privacy, node state, recommender, data-owner commands."""
