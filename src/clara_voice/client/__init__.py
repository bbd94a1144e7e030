"""The smoke-test client: ``python -m clara_voice.client`` joins a room, speaks a WAV file as
its microphone, records Clara's answers, shows the session's states and rides out network
trouble with seed 001's backoff. It is for operators; the server never imports it."""
