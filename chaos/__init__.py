"""`make chaos` and `make soak`: faults injected into the README's "two gateways behind nginx"
set-up under load, and the same set-up watched for leaks over a long run.

`system` starts and stops that set-up (`make run`'s devstack, a second gateway and a second
agent, deploy/nginx.conf); `load` is the outside world (resuming WebSocket clients, a producer
with idempotency keys) and `chat` its streaming answers (askers that resume with
`Last-Event-ID`); `faults` holds the steps, one class per fault; `report` turns what was
recorded into the table (pure) and `plot` into the picture; `run` sequences a run and `__main__`
is its command line. `soak` is the long run, `trend` its least-squares slopes (pure). Loopback
only, bounded in time.
"""
