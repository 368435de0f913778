"""Shared plumbing of the Wuji services.

Kept deliberately small: the event envelope and wire schemas that every service and integrator shares,
and the reliability mechanisms (outbox, inbox, unit of work, reliable event handler, bounded RPC,
metrics exporter) that would otherwise be copied five times.
"""
