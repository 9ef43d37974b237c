"""Protocol adapters: the shared adapter base, and OPC-UA and Modbus implementations.

Adapters know the plant and the local broker; they know nothing of the cloud.
"""
