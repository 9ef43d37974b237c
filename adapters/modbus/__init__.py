"""The Modbus adapter: polls Modbus TCP and RTU equipment through one scheduler per physical bus,
publishes tag values on the local broker and writes `/set` commands back (pymodbus does the protocol).
"""
