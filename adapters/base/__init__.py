"""The adapter base every protocol adapter (Modbus, OPC-UA) builds on: the tag value model, the
publish-on-change decision, the publish loop, `/set` command routing and per-device health.

Protocol-neutral: nothing here imports a protocol library or does field-bus I/O.
"""
