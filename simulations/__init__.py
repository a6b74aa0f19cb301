"""fedrec simulations: partitioners, presets, the simulation driver, the centralized reference, benchmarks."""
