"""The names AWS IoT allows for things and shadows (the iot-data API reference, UpdateThingShadow:
thingName `[a-zA-Z0-9:_-]+` of 1 to 128, shadowName `[$a-zA-Z0-9:_-]+` of 1 to 64; `$` for AWS's
reserved shadows such as `$package`). The config, the shadow service and the CLI check the same."""

THING_NAME_PATTERN = r"^[A-Za-z0-9:_-]{1,128}$"
SHADOW_NAME_PATTERN = r"^[$A-Za-z0-9:_-]{1,64}$"
