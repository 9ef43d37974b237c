"""The core process: the gateway's control plane at run time (status of every component today;
deployments, certificates, shadows and the function dispatcher plug in here).
"""
