from wuji_common.errors import Forbidden, InvalidTransition, NotFound, ValidationError  # noqa: F401
