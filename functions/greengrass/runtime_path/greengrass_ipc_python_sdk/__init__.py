"""What a Greengrass v1 core provided to its functions as `greengrass_ipc_python_sdk`: the client of
the core's local HTTP API (`ipc_client`). millgate's clean-room version.
"""
