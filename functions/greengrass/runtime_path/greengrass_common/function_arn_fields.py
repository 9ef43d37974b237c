"""Parsing a Lambda function ARN into its fields, and building a qualified one."""

import re

_FUNCTION_ARN = re.compile(
    r"^arn:(?P<partition>aws(-[a-z]+)*):lambda:(?P<region>[a-z]{2}(-[a-z]+)+-[0-9]+):(?P<account>[0-9a-zA-Z]*):"
    r"function:(?P<name>[a-zA-Z0-9_-]+)(:(?P<qualifier>\$LATEST|[a-zA-Z0-9_-]+))?$"
)


class FunctionArnFields:
    def __init__(self, function_arn: str):
        match = _FUNCTION_ARN.match(function_arn or "")
        if match is None:
            raise ValueError("Cannot parse given string as a function ARN.")
        self.partition = match.group("partition")
        self.region = match.group("region")
        self.account_id = match.group("account")
        self.name = match.group("name")
        self.qualifier: str | None = match.group("qualifier")
        self.unqualified_arn = f"arn:{self.partition}:lambda:{self.region}:{self.account_id}:function:{self.name}"

    @staticmethod
    def build_function_arn(unqualified_arn: str, qualifier: str | None = None) -> str:
        return f"{unqualified_arn}:{qualifier}" if qualifier else unqualified_arn
