"""The benchmark: how fast graph-migrate hashes a large legacy root, against the machine's limit.

``python -m bench`` builds (once, cached under ``bench/out/``) a large legacy root per storage
driver with the fixture builder, then times, side by side and repeated, ``tar -c | openssl dgst
-sha256`` over every layer's payload (the limit) and the whole ``graph-migrate run --dry-run``
command, with tar-split data and without it (regeneration), and reports peak memory per process.
"""
