"""Function runtime: dispatcher, worker processes and the SDK that user code imports.

Functions know the SDK contract, not the dispatcher's internals.
"""
