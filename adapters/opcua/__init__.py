"""The OPC-UA adapter: keeps a self-healing session to one OPC-UA server, publishes its nodes' values
(subscribed or polled) on the local broker, writes `/set` commands and calls configured methods.

asyncua does the protocol; this package is configuration, session lifecycle, mapping and health.
"""
