"""The test kit, shared by the tests and the benchmarks: fakes that subclass livekit's own
classes, loopback peers that speak the providers' and LiveKit's wire formats, real speech
from espeak-ng, the worker as a subprocess, and a real livekit-server with real clients."""
