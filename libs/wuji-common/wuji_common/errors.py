"""Typed errors that cross the RPC boundary.

Registered with nameko's exception registry, so a department system calling
``triage.accept_order`` gets ``NotYourOrder`` back, not a generic RemoteError. Arguments stay JSON
primitives because they travel as ``exc_args``.
"""
from nameko.exceptions import deserialize_to_instance


class WujiError(Exception):
    """Base of caller-caused errors (entrypoints list these in ``expected_exceptions``)."""


@deserialize_to_instance
class ValidationError(WujiError):
    """Input rejected; ``fields`` maps each bad field to its messages. Nothing was written."""

    def __init__(self, message="invalid input", fields=None):
        super().__init__(message, fields or {})
        self.message = message
        self.fields = fields or {}


@deserialize_to_instance
class NotFound(WujiError):
    pass


@deserialize_to_instance
class NotYourOrder(WujiError):
    """A unit tried to act on an order (or operation) that is not routed to it."""


@deserialize_to_instance
class InvalidTransition(WujiError):
    """The action is not allowed in the current state (e.g. resolving an order not yet accepted)."""


@deserialize_to_instance
class Unauthenticated(WujiError):
    """No token, or a token that is forged, expired, revoked or signed with an unknown key."""


@deserialize_to_instance
class Forbidden(WujiError):
    """The caller is known but its role or scope does not allow this (another unit's order, …)."""


@deserialize_to_instance
class RpcTimeout(WujiError):
    """A call to another service did not answer within its bound."""


EXPECTED = (ValidationError, NotFound, NotYourOrder, InvalidTransition, Forbidden, Unauthenticated)
