"""Greengrass v1 drop-in: the core's v1 HTTP API and system functions, the v1 worker kinds the
dispatcher runs, and the function-side runtime that calls an unmodified v1 handler.
"""
