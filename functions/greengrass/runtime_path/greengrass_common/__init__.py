"""What a Greengrass v1 core provided to its functions as `greengrass_common`: the environment the
runtime set (`env_vars`) and function ARN parsing (`function_arn_fields`). millgate's clean-room version.
"""
