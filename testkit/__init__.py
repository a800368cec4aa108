"""What the tests and the bench share: starting and stopping server
processes (`procs`) and the scripted fake engine (`fake_engine`)."""
