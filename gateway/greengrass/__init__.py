"""Greengrass v1 compatibility: the names of the v1 contract (system function ARNs, function and thing
ARNs, environment variables), shared by the importer and the function runtime. No I/O here.
"""
