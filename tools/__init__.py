"""Operator tools that talk HTTP to any running gateway: the model card's
performance tables (`seed`), its accuracy checks (`verify`), a flood of
concurrent streams (`flood`), and pooled clients after idle gaps
(`keepalive`: is a proxy's or client's pool racing the server's keep-alive
timeout?). Nothing here imports the gateway's code."""
