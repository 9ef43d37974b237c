"""Not imported as a package: this directory itself goes first on every Greengrass v1 function's
sys.path. It holds millgate's clean-room `greengrass_common` and `greengrass_ipc_python_sdk`, the two
modules the v1 core provided to functions, written from the contract (docs/greengrass-v1.md).
"""
