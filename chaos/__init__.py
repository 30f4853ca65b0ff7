"""`make chaos`: faults injected into the README's "two gateways behind nginx" set-up under load.

`system` starts and stops that set-up (`make run`'s devstack, a second gateway, deploy/nginx.conf);
`load` is the outside world (resuming WebSocket clients, a producer with idempotency keys);
`faults` holds the steps, one class per fault; `report` turns what was recorded into the table
(pure); `run` sequences a run and `__main__` is its command line. Loopback only, bounded in time.
"""
