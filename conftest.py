# eventlet must patch the standard library before anything imports sockets or threads
# (nameko's pytest plugin no longer does it).
import eventlet

eventlet.monkey_patch()

pytest_plugins = ["wuji_common.testing"]
