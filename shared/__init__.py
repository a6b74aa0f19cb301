"""fedrec shared core: data, pseudonyms, models, metrics, configuration.

Everything every role needs and nothing role-specific. Imports no Flower
server/client code (see ../shared/DESIGN.md, "Packages").
"""
