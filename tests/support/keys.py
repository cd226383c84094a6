"""The master key of the tests' keyrings (32 bytes, base64): the `settings` fixture carries
it, so every process a test starts gets it through `Settings.child_env`; each test's event
topic has its own keys topic (`<topic>.keys`)."""

MASTER_KEY = "dGVzdHMgb2YgZW50aXRsZWQ6IGEgbWFzdGVyIGtleSE="
