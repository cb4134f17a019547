"""Entry points: the CLI, the node server, the HTTP app with its OpenAI serving and protocol,
the detokenizer, the engine client, health, metrics and the demo.

The top layer: may import everything below it, including `testing` (the demo builds a tiny
checkpoint); nothing imports it but `tpserve.__main__`.
"""
