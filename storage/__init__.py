"""SQLite-backed stores: the store-and-forward spool, shadow documents, bulk batches.

Storage knows nothing of MQTT or processes.
"""
