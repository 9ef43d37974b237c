"""The control plane: config model and validation, CLI, process model, broker config, status.

Everything else plugs into this; it imports nothing from adapters/ or functions/.
"""
